"""The config repo's one-round-trip state script, run with real git against local bare repos (no fleet)."""

import subprocess

import pytest

from pyinfra_backup.git import (
    ConfigRepo, fetch_count_command, parse_counts, parse_state, parse_tag_state, push_command, state_command,
    sync_plan, tag_sections,
)
from pyinfra_backup.shell import sectioned_script

ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1", "LANG": "C",
       "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@x"}


def sh(command, cwd=None, check=True):
    return subprocess.run(["sh", "-c", command], cwd=cwd, env=ENV, capture_output=True, text=True, check=check)


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], env=ENV, capture_output=True, text=True, check=True).stdout.strip()


def commit(repo, message):
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def read_state(config):
    out = sh(state_command(config))
    assert out.returncode == 0
    return parse_state(config, out.stdout.splitlines())


@pytest.fixture
def repos(tmp_path):
    local = tmp_path / "config repo"  # a space: every path is quoted
    subprocess.run(["git", "init", "-q", "-b", "main", str(local)], env=ENV, check=True)
    commit(local, "one")
    for name in ("origin", "mirror"):
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(tmp_path / f"{name}.git")], env=ENV, check=True)
    config = ConfigRepo(str(local), {"origin": str(tmp_path / "origin.git"), "mirror": str(tmp_path / "mirror.git")},
                        ("main",), True)
    return tmp_path, local, config


def test_new_then_in_sync_then_ahead(repos):
    tmp, local, config = repos
    state = read_state(config)
    assert state.error is None and state.head == "main" and not state.remotes["origin"].exists
    plan = sync_plan(state, config)
    assert [(s.short, s.status) for s in plan["origin"]] == [("main", "new")]
    for name, remote in state.remotes.items():
        sh(push_command(remote, config, plan[name]))
    assert [s.status for s in sync_plan(read_state(config), config)["mirror"]] == ["in sync"]
    commit(local, "two")
    git(local, "tag", "-a", "-m", "Release 1", "v1")
    git(local, "tag", "light")
    state = read_state(config)
    assert state.merged == {"main": {"v1", "light"}}
    plan = sync_plan(state, config)
    assert [(s.short, s.status, s.ahead, s.behind) for s in plan["origin"]] == [
        ("main", "ahead", 1, 0), ("v1", "new", None, None)]  # the lightweight tag stays local


def test_diverged_when_the_remote_commit_is_known_and_unknown_until_fetched(repos):
    tmp, local, config = repos
    state = read_state(config)
    for name, remote in state.remotes.items():
        sh(push_command(remote, config, sync_plan(state, config)[name]))
    other = tmp / "other"
    subprocess.run(["git", "clone", "-q", str(tmp / "mirror.git"), str(other)], env=ENV, check=True)
    theirs = commit(other, "theirs")
    git(other, "push", "-q", "origin", "main")
    ours = commit(local, "ours")
    state = read_state(config)
    sync = sync_plan(state, config)["mirror"][0]
    assert (sync.status, sync.remote_id, sync.local) == ("unknown", theirs, ours)
    assert sync_plan(state, config)["origin"][0].status == "ahead"
    git(local, "remote", "add", "mirror", config.remotes["mirror"])
    fetched = sh(fetch_count_command(read_state(config).remotes["mirror"], config, sync))
    assert parse_counts(fetched.stdout.splitlines()) == (1, 1)
    assert git(local, "rev-parse", "refs/remotes/mirror/main") == theirs and git(local, "rev-parse", "main") == ours
    sync = sync_plan(read_state(config), config)["mirror"][0]  # now known locally: counted in the one command
    assert (sync.status, sync.ahead, sync.behind) == ("diverged", 1, 1)


def test_remote_errors_and_missing_repo(repos):
    tmp, local, config = repos
    broken = ConfigRepo(config.path, {"gone": str(tmp / "gone.git")}, ("main", "nope"))
    state = read_state(broken)
    assert "does not appear to be a git repository" in state.remotes["gone"].error
    assert state.branches_of(broken) == ("main", "nope") and "nope" not in state.branches
    missing = read_state(ConfigRepo(str(tmp / "absent"), {"o": "/x"}))
    assert missing.error and "absent" in missing.error


def test_tag_state(repos):
    tmp, local, config = repos
    first = git(local, "rev-parse", "HEAD")
    git(local, "tag", "-a", "-m", "Release 1", "v1")
    commit(local, "two")

    def tag_state(tag, ref):
        return parse_tag_state(sh(sectioned_script(tag_sections(config, tag, ref))).stdout.splitlines(), tag)

    state = tag_state("v1", "HEAD~1")
    assert state.existing.commit == first == state.target and state.existing.annotated and state.subject == "Release 1"
    assert tag_state("v2", "HEAD").existing is None and tag_state("v2", "nope").target is None
    assert not tag_state("bad..name", "HEAD").valid
