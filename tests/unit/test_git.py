"""Config repo: command building, parsing and the push plan (pyinfra_backup/git.py), without git."""

import shlex

import pytest

from pyinfra_backup.git import (
    ConfigRepo, RefSync, RemoteState, RepoState, Tag, fetch_count_command, git_error, parse_counts, parse_refs,
    parse_remote, parse_remote_config, parse_state, parse_tag_state, problems, push_command, ref_sync,
    remote_commands, state_command, state_sections, sync_plan, tag_command, tag_sections, unsafe_ssh_command, with_counts,
)
from pyinfra_backup.shell import MARK, Section

A, B, C, D, T = ("a" * 40), ("b" * 40), ("c" * 40), ("d" * 40), ("e" * 40)
CONFIG = ConfigRepo("/etc/nix os", {"origin": "git@github.com:me/nixos.git", "mirror": "ssh://git@m:2222/nixos.git"},
                    ("main",), True, "ssh -i /root/.ssh/deploy -o StrictHostKeyChecking=yes")


def section_lines(name, stdout=(), stderr=(), rc=0):
    return [f"{MARK} {name}", *stdout, f"{MARK} {name} stderr", *stderr, f"{MARK} {name} rc {rc}"]


def test_from_data_defaults():
    config = ConfigRepo.from_data({"path": "/etc/nixos"})
    assert config == ConfigRepo("/etc/nixos", {}, (), True, None)
    assert ConfigRepo.from_data({"path": "/x", "push_tags": False, "branches": ["a", "b"]}).branches == ("a", "b")
    assert ConfigRepo.from_data({"path": "/x", "push_tags": False}).push_tags is False


def test_every_word_is_quoted_and_remote_commands_get_the_ssh_command():
    sections = state_sections(CONFIG)
    assert sections["repo"] == "git -C '/etc/nix os' rev-parse --absolute-git-dir"
    assert list(sections) == ["repo", "head", "remotes", "refs", "merged.0", "remote.origin", "remote.mirror"]
    assert sections["merged.0"].endswith("--merged=refs/heads/main refs/tags")
    remote = sections["remote.mirror"]
    assert remote.startswith('cat "$_d/1.err" >&2; _rc=$(cat "$_d/1.rc"); [ "$_rc" = 0 ] || exit "$_rc"')
    assert "for _b in main; do" in remote and "rev-list --left-right --count" in remote
    assert "GIT_SSH_COMMAND" not in sections["refs"]  # local commands stay local


def test_the_state_command_lists_every_remote_at_once_then_runs_the_sections():
    lines = state_command(CONFIG).splitlines()
    assert lines[:2] == ['_d=$(mktemp -d)', 'trap \'rm -rf "$_d"\' EXIT']
    assert lines[2] == ("( GIT_TERMINAL_PROMPT=0 GIT_SSH_COMMAND='ssh -i /root/.ssh/deploy -o StrictHostKeyChecking=yes' "
                        "git -C '/etc/nix os' ls-remote --heads --tags git@github.com:me/nixos.git "
                        '>"$_d/0.out" 2>"$_d/0.err"; echo $? >"$_d/0.rc" ) &')
    assert lines[3].endswith("ls-remote --heads --tags ssh://git@m:2222/nixos.git "
                             '>"$_d/1.out" 2>"$_d/1.err"; echo $? >"$_d/1.rc" ) &')
    assert lines[4] == "wait" and lines[5].startswith("_e=$(mktemp)")


def test_default_branch_is_the_current_one_and_no_tags_without_push_tags():
    config = ConfigRepo("/r", {"o": "/srv/o.git"}, (), False)
    sections = state_sections(config)
    assert not any(name.startswith("merged.") for name in sections)
    assert 'for _b in "$(git -C /r symbolic-ref -q --short HEAD)"; do' in sections["remote.o"]
    assert "GIT_SSH_COMMAND" not in state_command(config)  # unset: git's own ssh
    tagged = state_sections(ConfigRepo("/r", {}, (), True))
    assert tagged["merged.0"].endswith("--merged=HEAD refs/tags")


UNSAFE_SSH_COMMANDS = [
    "ssh -o StrictHostKeyChecking=no", "ssh -oStrictHostKeyChecking=accept-new", "ssh -o 'StrictHostKeyChecking off'",
    "ssh -o stricthostkeychecking=NO", "ssh -o UserKnownHostsFile=/dev/null", "ssh -o UserKnownHostsFile /dev/null",
    # OpenSSH reads "false" as "no" (readconf.c: multistate_strict_hostkey), in any case
    "ssh -o StrictHostKeyChecking=false", "ssh -oStrictHostKeyChecking=FALSE", "ssh -o 'StrictHostKeyChecking False'",
    "ssh -o StrictHostKeyChecking='false'", "ssh -o StrictHostKeyChecking=Accept-New", "ssh -o StrictHostKeyChecking=Off",
]


@pytest.mark.parametrize("command", UNSAFE_SSH_COMMANDS)
def test_ssh_commands_that_stop_checking_host_keys_are_refused(command):
    from pyinfra_backup.validate import host_data_errors

    assert "host keys must be pinned" in unsafe_ssh_command(command)
    config = {"path": "/etc/nixos", "remotes": {"origin": "git@github.com:me/nixos.git"}, "ssh_command": command}
    assert [line.split(": expected")[0] for line in host_data_errors("h", {"config_repo": config})] == [
        "h: config_repo.ssh_command"]  # the schema's pattern refuses the same commands


@pytest.mark.parametrize("command", [
    "ssh", "ssh -i /k -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/etc/pinned",
    "ssh -o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null",
])
def test_ssh_commands_that_check_host_keys_are_accepted(command):
    assert unsafe_ssh_command(command) is None


def test_parse_remote_config_keeps_dotted_names_and_every_value():
    lines = ["remote.origin.url git@x:a.git", "remote.my.mirror.url /srv/m.git", "remote.my.mirror.pushurl /srv/p.git",
             "remote.two.url u1", "remote.two.url u2"]
    assert parse_remote_config(lines) == {
        "origin": {"url": ["git@x:a.git"], "pushurl": []},
        "my.mirror": {"url": ["/srv/m.git"], "pushurl": ["/srv/p.git"]},
        "two": {"url": ["u1", "u2"], "pushurl": []},
    }


def test_parse_refs_branches_annotated_and_lightweight_tags():
    branches, tags = parse_refs([f"{A} commit refs/heads/main", f"{B} commit refs/heads/feature/x",
                                 f"{T} tag refs/tags/v1 {A}", f"{C} commit refs/tags/light", ""])
    assert branches == {"main": A, "feature/x": B}
    assert tags == {"v1": Tag(T, "tag", A), "light": Tag(C, "commit", C)}
    assert tags["v1"].annotated and not tags["light"].annotated


def test_parse_remote_drops_peeled_lines_and_reads_counts():
    refs, counts = parse_remote([f"{B}\trefs/heads/main", f"{T}\trefs/tags/v1", f"{A}\trefs/tags/v1^{{}}", "",
                                 f"count main {B} 2\t1", f"count dev {C} unknown"])
    assert refs == {"refs/heads/main": B, "refs/tags/v1": T}
    assert counts == {"main": (B, (2, 1)), "dev": (C, None)}


def test_git_error_drops_the_generic_advice():
    section = Section(stderr=["Host key verification failed.", "fatal: Could not read from remote repository.", "",
                              "Please make sure you have the correct access rights", "and the repository exists."], rc=128)
    assert git_error(section) == "Host key verification failed.; fatal: Could not read from remote repository."
    assert git_error(Section(rc=2)) == "exit status 2"


def remote(name="origin", refs=None, counts=None, error=None):
    return RemoteState(name, f"/srv/{name}.git", [f"/srv/{name}.git"], [], refs or {}, counts or {}, error)


@pytest.mark.parametrize("remote_id, counts, status, ahead, behind", [
    (None, None, "new", None, None),
    (A, None, "in sync", 0, 0),
    (B, (B, (2, 0)), "ahead", 2, 0),
    (B, (B, (0, 3)), "behind", 0, 3),
    (B, (B, (1, 1)), "diverged", 1, 1),
    (B, (B, None), "unknown", None, None),
    (B, None, "unknown", None, None),  # no count line: treated as unknown, never as pushable
    (B, (C, (2, 0)), "unknown", None, None),  # a count for another commit does not apply
])
def test_ref_sync_statuses(remote_id, counts, status, ahead, behind):
    refs = {"refs/heads/main": remote_id} if remote_id else {}
    sync = ref_sync(remote(refs=refs, counts={"main": counts} if counts else {}), "main", A)
    assert (sync.status, sync.ahead, sync.behind) == (status, ahead, behind)


def test_a_branch_missing_locally_is_never_pushed():
    assert ref_sync(remote(), "main", None).status == "missing"


def state_with(remotes, tags=None, merged=None, branches=None):
    return RepoState("/r", head="main", branches=branches or {"main": A}, tags=tags or {},
                     merged=merged or {}, remotes={r.name: r for r in remotes})


def test_tags_ride_only_on_branches_that_are_in_sync_or_pushed():
    config = ConfigRepo("/r", {"ok": "/srv/ok.git", "div": "/srv/div.git"}, ("main",))
    tags = {"v1": Tag(T, "tag", A), "light": Tag(A, "commit", A)}
    ok = remote("ok", refs={"refs/heads/main": B}, counts={"main": (B, (1, 0))})
    div = remote("div", refs={"refs/heads/main": B}, counts={"main": (B, (1, 2))})
    plan = sync_plan(state_with([ok, div], tags, {"main": {"v1", "light"}}), config)
    assert [(s.ref, s.status) for s in plan["ok"]] == [("refs/heads/main", "ahead"), ("refs/tags/v1", "new")]
    assert [(s.ref, s.status) for s in plan["div"]] == [("refs/heads/main", "diverged")]


def test_a_tag_that_differs_on_the_remote_is_a_conflict_and_an_equal_one_is_in_sync():
    config = ConfigRepo("/r", {"o": "/srv/o.git"}, ("main",))
    tags = {"v1": Tag(T, "tag", A), "v2": Tag(D, "tag", A)}
    o = remote("o", refs={"refs/heads/main": A, "refs/tags/v1": T, "refs/tags/v2": C})
    plan = sync_plan(state_with([o], tags, {"main": {"v1", "v2"}}), config)
    assert [(s.short, s.status) for s in plan["o"]] == [("main", "in sync"), ("v1", "in sync"), ("v2", "conflict")]
    assert "tags are never moved" in problems(state_with([o]), config, plan)[0]
    no_tags = sync_plan(state_with([o], tags, {"main": {"v1", "v2"}}), ConfigRepo("/r", {"o": "x"}, ("main",), False))
    assert [s.short for s in no_tags["o"]] == ["main"]


def test_problems_name_the_remote_the_branch_and_ahead_behind():
    config = ConfigRepo("/r", {"origin": "/srv/origin.git", "mirror": "/srv/mirror.git", "gone": "/srv/gone.git"},
                        ("main", "stable"))
    mirror = remote("mirror", refs={"refs/heads/main": B}, counts={"main": (B, (1, 2))})
    gone = remote("gone", error="fatal: '/srv/gone.git' does not appear to be a git repository")
    state = state_with([remote("origin"), mirror, gone])
    lines = problems(state, config, sync_plan(state, config))
    assert lines[0] == "branch stable: not in the local repo /r (config_repo.branches)"
    assert lines[1].startswith("remote gone (/srv/gone.git): cannot list it: fatal:")
    assert lines[2].startswith(f"remote mirror: branch main: diverged: local 1 ahead, 2 behind (remote {B[:12]}, "
                               f"local {A[:12]}); not pushed (never forced)")
    assert len(lines) == 3
    detached = RepoState("/r", head=None, remotes={})
    assert problems(detached, ConfigRepo("/r"), {}) == ["HEAD is detached and config_repo.branches is not set: no branch to push"]


def test_counts_after_a_fetch_turn_unknown_into_diverged_or_behind():
    sync = RefSync("mirror", "refs/heads/main", A, B, "unknown")
    assert with_counts(sync, 1, 1).describe().startswith("remote mirror: branch main: diverged: local 1 ahead, 1 behind")
    assert with_counts(sync, 0, 4).status == "behind" and "pull from mirror first" in with_counts(sync, 0, 4).describe()
    assert parse_counts(["1\t1"]) == (1, 1) and parse_counts(["warning: x", "0\t4", ""]) == (0, 4)
    assert parse_counts(["fatal: no"]) is None


def test_remote_commands_add_set_url_and_drop_a_pushurl():
    config = ConfigRepo("/r", {"o": "/srv/o.git"})
    assert remote_commands(RemoteState("o", "/srv/o.git"), config) == ["git -C /r remote add o /srv/o.git"]
    assert remote_commands(RemoteState("o", "/srv/o.git", ["/old.git"]), config) == [
        "git -C /r config --replace-all remote.o.url /srv/o.git"]
    assert remote_commands(RemoteState("o", "/srv/o.git", ["/srv/o.git"], ["/p.git"]), config) == [
        "git -C /r config --unset-all remote.o.pushurl"]
    assert remote_commands(RemoteState("o", "/srv/o.git", ["/srv/o.git"], ["/srv/o.git"]), config) == []


def test_push_is_never_forced_and_goes_by_name_only_when_the_remote_is_configured():
    syncs = [RefSync("o", "refs/heads/main", A, B, "ahead", 1, 0), RefSync("o", "refs/tags/v1", T, None, "new")]
    configured = RemoteState("o", "/srv/o.git", ["/srv/o.git"])
    command = push_command(configured, CONFIG, syncs)
    argv = shlex.split(command)
    assert argv[:2] == ["GIT_TERMINAL_PROMPT=0", "GIT_SSH_COMMAND=ssh -i /root/.ssh/deploy -o StrictHostKeyChecking=yes"]
    assert argv[2:] == ["git", "-C", "/etc/nix os", "push", "o",
                        "refs/heads/main:refs/heads/main", "refs/tags/v1:refs/tags/v1"]
    assert "+" not in command.replace("GIT", "") and "force" not in command
    unconfigured = RemoteState("o", "/srv/o.git", ["/elsewhere.git"])
    assert shlex.split(push_command(unconfigured, CONFIG, syncs))[6] == "/srv/o.git"


def test_fetch_updates_only_the_remote_tracking_ref_then_counts():
    sync = RefSync("mirror", "refs/heads/main", A, B, "unknown")
    command = fetch_count_command(RemoteState("mirror", "/m.git", ["/m.git"]), ConfigRepo("/r"), sync)
    assert command == ("GIT_TERMINAL_PROMPT=0 git -C /r fetch --quiet --no-tags mirror "
                       "+refs/heads/main:refs/remotes/mirror/main && "
                       f"git -C /r rev-list --left-right --count {A}...{B}")


def test_parse_state_of_a_repo_and_two_remotes():
    config = ConfigRepo("/r", {"origin": "/srv/o.git", "mirror": "/srv/m.git"}, ("main",))
    lines = [
        *section_lines("repo", ["/r/.git"]),
        *section_lines("head", ["main"]),
        *section_lines("remotes", ["remote.origin.url /srv/o.git"]),
        *section_lines("refs", [f"{A} commit refs/heads/main", f"{T} tag refs/tags/v1 {A}"]),
        *section_lines("merged.0", ["refs/tags/v1"]),
        *section_lines("remote.origin", [f"{A}\trefs/heads/main", f"{T}\trefs/tags/v1", f"{A}\trefs/tags/v1^{{}}"]),
        *section_lines("remote.mirror", [], ["ssh: connect to host m port 22: No route to host",
                                             "fatal: Could not read from remote repository."], 128),
    ]
    state = parse_state(config, lines)
    assert state.error is None and state.head == "main" and state.branches == {"main": A}
    assert state.merged == {"main": {"v1"}}
    assert state.remotes["origin"].configured and not state.remotes["mirror"].exists
    assert state.remotes["mirror"].error.startswith("ssh: connect to host m port 22: No route to host")
    plan = sync_plan(state, config)
    assert [s.status for s in plan["origin"]] == ["in sync", "in sync"] and "mirror" not in plan


def test_parse_state_of_a_path_that_is_not_a_repo():
    lines = section_lines("repo", [], ["fatal: cannot change to '/nope': No such file or directory"], 128)
    state = parse_state(ConfigRepo("/nope"), lines)
    assert state.error == "fatal: cannot change to '/nope': No such file or directory"


def test_release_tag_commands_and_state():
    config = ConfigRepo("/r")
    assert tag_command(config, "v1.2.0", "Release 1.2.0\n\nnotes", A) == (
        f"git -C /r tag --annotate --message 'Release 1.2.0\n\nnotes' v1.2.0 {A}")
    sections = tag_sections(config, "v1.2.0", "main~1")
    assert sections["target"] == "git -C /r rev-parse -q --verify --end-of-options 'main~1^{commit}'"
    lines = [*section_lines("repo", ["/r/.git"]), *section_lines("valid"),
             *section_lines("tag", [f"refs/tags/v1.2.0\t{T}\ttag\t{A}\tRelease 1.2.0"]),
             *section_lines("target", [A]), *section_lines("ident", ["Me <me@x> 1 +0000"])]
    state = parse_tag_state(lines, "v1.2.0")
    assert state.existing == Tag(T, "tag", A) and state.subject == "Release 1.2.0" and state.target == A
    assert state.valid and state.ident_error is None
    nested = [*section_lines("repo", ["/r/.git"]), *section_lines("valid"),
              *section_lines("tag", [f"refs/tags/v1.2.0/rc\t{T}\ttag\t{A}\trc"]), *section_lines("target", [], [], 1),
              *section_lines("ident", [], ["fatal: unable to auto-detect email address"], 128)]
    state = parse_tag_state(nested, "v1.2.0")
    assert state.existing is None and state.target is None and state.ident_error.startswith("fatal: unable")


def test_schema_accepts_ssh_command_and_refuses_one_that_stops_checking_host_keys():
    from pyinfra_backup.validate import host_data_errors

    ok = {"path": "/etc/nixos", "remotes": {"origin": "git@github.com:me/nixos.git"}, "branches": ["main"],
          "push_tags": True, "ssh_command": "ssh -i /root/.ssh/config_repo -o StrictHostKeyChecking=yes"}
    assert host_data_errors("h", {"config_repo": ok}) == []
    assert host_data_errors("h", {"config_repo": {**ok, "ssh_command": "ssh -o StrictHostKeyChecking=accept-new"}}) == [
        "h: config_repo.ssh_command: expected an ssh command that keeps host-key checking on (no StrictHostKeyChecking="
        "no/off/false/accept-new, no UserKnownHostsFile=/dev/null), got 'ssh -o StrictHostKeyChecking=accept-new'"]
    assert host_data_errors("h", {"config_repo": {**ok, "remotes": {"o": "--upload-pack=x"}}}) == [
        "h: config_repo.remotes.o: expected a git URL or path (not starting with '-'), got '--upload-pack=x'"]
