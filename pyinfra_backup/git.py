"""The config repo, pure: host data, the one-round-trip state script, its parsing, and the push plan.

`state_command(config)` is ONE remote command (see shell.sectioned_script) that reads, for the repo at
`config_repo.path`: the git dir, the current branch, the configured remotes (`git config --get-regexp`),
local branch heads and tags, the annotated tags reachable from each configured branch, and for each
remote `git ls-remote --heads --tags URL` followed by ahead/behind counts (`git rev-list --left-right
--count local...remote`) for every configured branch whose remote commit differs from the local one
and is known locally. `parse_state` turns the output into a `RepoState`; `sync_plan` decides per remote
and ref what a push would do:

    in sync      remote == local                          nothing to do
    new          the remote lacks the branch or tag       pushed
    ahead        remote commit is an ancestor of local    pushed (fast-forward)
    behind       the remote has commits local lacks, local has none the remote lacks     not pushed
    diverged     both have commits the other lacks        not pushed
    unknown      the remote commit is not in the local repo (not fetched yet)         not pushed
    conflict     a tag of the same name is another object on the remote              not pushed
    missing      the configured branch does not exist locally                        not pushed

Nothing is ever forced (no `+` refspec, no `--force`). An `unknown` remote commit can only mean the
remote has commits local lacks (so a push would be refused as non-fast-forward), but how many and
whether local has its own cannot be told without its objects: the push operation then FETCHES that
branch into `refs/remotes/<remote>/<branch>` (a change to the local repo's remote-tracking refs only,
never to a local branch or the work tree) and counts. A later run finds the commit locally and reports
the same ahead/behind without fetching again.

Only annotated tags are pushed (like `git push --follow-tags`), and only those reachable from a
configured branch that is in sync with, or being pushed to, that remote: a tag never drags the history
of a diverged branch along.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pyinfra_backup.jsonable import JsonFact
from pyinfra_backup.shell import Section, parse_sections, sectioned_script, sh_join, with_env

PUSHED = ("new", "ahead")
PROBLEMS = ("behind", "diverged", "unknown", "conflict", "missing")

_UNSAFE_SSH = re.compile(
    r"""StrictHostKeyChecking["']?(?:\s*=\s*|\s+)["']?(?:no|off|false|accept-new)\b"""
    r"""|UserKnownHostsFile["']?(?:\s*=\s*|\s+)["']?/dev/null\b""",
    re.IGNORECASE,
)


def unsafe_ssh_command(command: str) -> str | None:
    """Why an `ssh_command` is refused (it turns host-key checking off or trusts on first use), or None.

    >>> unsafe_ssh_command("ssh -o StrictHostKeyChecking=accept-new")
    'StrictHostKeyChecking=accept-new: host keys must be pinned, not trusted on first use or ignored'
    >>> unsafe_ssh_command("ssh -i /root/.ssh/deploy -o StrictHostKeyChecking=yes") is None
    True
    """
    match = _UNSAFE_SSH.search(command)
    if not match:
        return None
    return f"{match.group(0)}: host keys must be pinned, not trusted on first use or ignored"


@dataclass(frozen=True)
class ConfigRepo:
    """`config_repo` host data. `branches` empty = the current branch; `ssh_command` becomes
    GIT_SSH_COMMAND for ls-remote, fetch and push (unset: git's own ssh and ~/.ssh/config)."""

    path: str
    remotes: dict[str, str] = field(default_factory=dict)
    branches: tuple[str, ...] = ()
    push_tags: bool = True
    ssh_command: str | None = None

    @classmethod
    def from_data(cls, data: Mapping) -> ConfigRepo:
        return cls(
            path=data["path"],
            remotes=dict(data.get("remotes") or {}),
            branches=tuple(data.get("branches") or ()),
            push_tags=data.get("push_tags", True) is not False,
            ssh_command=data.get("ssh_command") or None,
        )

    def git(self, *args: str) -> str:
        """A local git command in the repo: `git -C PATH ARGS...`, every word quoted."""
        return sh_join(["git", "-C", self.path, *args])

    def env(self) -> dict[str, str]:
        """Environment for git commands that reach a remote: never prompt, the configured ssh."""
        env = {"GIT_TERMINAL_PROMPT": "0"}
        if self.ssh_command:
            env["GIT_SSH_COMMAND"] = self.ssh_command
        return env

    def remote_git(self, *args: str) -> str:
        return with_env(self.env(), ["git", "-C", self.path, *args])


# --- the state script ---------------------------------------------------------------------------------

_COUNT = """\
for _b in {branches}; do
  _r=$(printf '%s\\n' "$_o" | awk -v ref="refs/heads/$_b" '$2 == ref {{ print $1 }}')
  _l=$({git} rev-parse -q --verify "refs/heads/$_b") || continue
  [ -n "$_r" ] && [ "$_r" != "$_l" ] || continue
  if {git} cat-file -e "$_r^{{commit}}" 2>/dev/null; then
    echo "count $_b $_r $({git} rev-list --left-right --count "$_l...$_r")"
  else
    echo "count $_b $_r unknown"
  fi
done"""


def _branch_words(config: ConfigRepo) -> str:
    if config.branches:
        return sh_join(config.branches)
    return f'"$({config.git("symbolic-ref", "-q", "--short", "HEAD")})"'


def listing_command(config: ConfigRepo, name: str) -> str:
    """`git ls-remote` of one remote's configured URL (not its name: it may not be configured yet)."""
    return config.remote_git("ls-remote", "--heads", "--tags", config.remotes[name])


def remote_section(config: ConfigRepo, name: str) -> str:
    """One remote's listing, read from the files the state command's preamble wrote (all remotes are
    listed at once, in the background), then `count BRANCH REMOTE_ID AHEAD BEHIND` (or `... unknown`)
    for each configured branch that differs and exists locally."""
    index = list(config.remotes).index(name)
    files = f'"$_d/{index}'
    count = _COUNT.format(branches=_branch_words(config), git=sh_join(["git", "-C", config.path]))
    return (f'cat {files}.err" >&2; _rc=$(cat {files}.rc"); [ "$_rc" = 0 ] || exit "$_rc"\n'
            f'_o=$(cat {files}.out")\nprintf \'%s\\n\' "$_o"\n{count}')


def state_sections(config: ConfigRepo) -> dict[str, str]:
    """The sections of the one remote command that reads the repo and every remote."""
    sections = {
        "repo": config.git("rev-parse", "--absolute-git-dir"),
        "head": config.git("symbolic-ref", "-q", "--short", "HEAD"),
        "remotes": config.git("config", "--get-regexp", r"^remote\..*\.(url|pushurl)$"),
        "refs": config.git("for-each-ref", "--format=%(objectname) %(objecttype) %(refname) %(*objectname)",
                           "refs/heads", "refs/tags"),
    }
    if config.push_tags:
        revs = [f"refs/heads/{b}" for b in config.branches] or ["HEAD"]
        for index, rev in enumerate(revs):
            sections[f"merged.{index}"] = config.git("for-each-ref", "--format=%(refname)", f"--merged={rev}", "refs/tags")
    for name in config.remotes:
        sections[f"remote.{name}"] = remote_section(config, name)
    return sections


def state_command(config: ConfigRepo) -> str:
    """The ONE remote command: every remote is listed in parallel into a temp dir (a slow remote costs
    its own latency, not the sum), then the sections run and read the listings."""
    preamble = ['_d=$(mktemp -d)', 'trap \'rm -rf "$_d"\' EXIT']
    for index, name in enumerate(config.remotes):
        preamble.append(f'( {listing_command(config, name)} >"$_d/{index}.out" 2>"$_d/{index}.err"; '
                        f'echo $? >"$_d/{index}.rc" ) &')
    preamble.append("wait")
    return "\n".join([*preamble, sectioned_script(state_sections(config))])


# --- parsing ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tag:
    object: str  # the tag object for an annotated tag, the commit for a lightweight one
    kind: str  # "tag" (annotated) or "commit" (lightweight)
    commit: str

    @property
    def annotated(self) -> bool:
        return self.kind == "tag"


@dataclass
class RemoteState:
    name: str
    url: str  # configured
    urls: list[str] = field(default_factory=list)  # remote.<name>.url values in the repo's config
    pushurls: list[str] = field(default_factory=list)
    refs: dict[str, str] = field(default_factory=dict)  # ls-remote: refname -> object id
    counts: dict[str, tuple[str, tuple[int, int] | None]] = field(default_factory=dict)  # branch -> (remote id, (ahead, behind) | None)
    error: str | None = None

    @property
    def exists(self) -> bool:
        return bool(self.urls)

    @property
    def configured(self) -> bool:
        """The remote exists with exactly the configured URL, for fetch and push."""
        return self.urls == [self.url] and self.pushurls in ([], [self.url])


@dataclass
class RepoState(JsonFact):
    path: str
    error: str | None = None
    head: str | None = None  # current branch, None when detached
    branches: dict[str, str] = field(default_factory=dict)  # local branch -> commit
    tags: dict[str, Tag] = field(default_factory=dict)
    merged: dict[str, set[str]] = field(default_factory=dict)  # configured branch -> tags reachable from it
    remotes: dict[str, RemoteState] = field(default_factory=dict)

    def branches_of(self, config: ConfigRepo) -> tuple[str, ...]:
        if config.branches:
            return config.branches
        return (self.head,) if self.head else ()


def git_error(section: Section) -> str:
    """git's reason, in one line: the meaningful stderr lines without its generic advice."""
    advice = ("Please make sure you have the correct access rights", "and the repository exists.")
    lines = [line.strip() for line in section.stderr if line.strip() and line.strip() not in advice]
    return "; ".join(lines[-3:]) if lines else f"exit status {section.rc}"


def parse_remote_config(lines: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    """`git config --get-regexp '^remote\\..*\\.(url|pushurl)$'` -> {remote: {"url": [..], "pushurl": [..]}}."""
    remotes: dict[str, dict[str, list[str]]] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if not key.startswith("remote."):
            continue
        name, _, var = key[len("remote."):].rpartition(".")
        if var in ("url", "pushurl") and name:
            remotes.setdefault(name, {"url": [], "pushurl": []})[var].append(value)
    return remotes


def parse_refs(lines: Iterable[str]) -> tuple[dict[str, str], dict[str, Tag]]:
    """for-each-ref `%(objectname) %(objecttype) %(refname) %(*objectname)` -> (branches, tags)."""
    branches, tags = {}, {}
    for line in lines:
        words = line.split()
        if len(words) < 3:
            continue
        obj, kind, ref = words[:3]
        if ref.startswith("refs/heads/"):
            branches[ref[len("refs/heads/"):]] = obj
        elif ref.startswith("refs/tags/"):
            commit = words[3] if len(words) > 3 else obj
            tags[ref[len("refs/tags/"):]] = Tag(obj, kind, commit)
    return branches, tags


def parse_remote(lines: Iterable[str]) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, int] | None]]]:
    """A remote section's stdout -> (ls-remote refs without peeled `^{}` lines, counts)."""
    refs, counts = {}, {}
    for line in lines:
        words = line.split()
        if len(words) >= 4 and words[0] == "count":
            branch, remote_id = words[1], words[2]
            counts[branch] = (remote_id, None if words[3] == "unknown" else (int(words[3]), int(words[4])))
        elif len(words) == 2 and not words[1].endswith("^{}"):
            refs[words[1]] = words[0]
    return refs, counts


def parse_state(config: ConfigRepo, lines: Iterable[str]) -> RepoState:
    sections = parse_sections(lines)
    repo = sections.get("repo", Section(rc=None))
    state = RepoState(path=config.path)
    if not repo.ok:
        state.error = git_error(repo)
        return state
    head = sections["head"]
    state.head = (head.text.strip() or None) if head.ok else None
    state.branches, state.tags = parse_refs(sections["refs"].stdout)
    revs = list(config.branches) if config.branches else ([state.head] if state.head else [])
    for index, branch in enumerate(revs):
        merged = sections.get(f"merged.{index}")
        if merged is not None and merged.ok:
            state.merged[branch] = {ref[len("refs/tags/"):] for ref in merged.stdout if ref.startswith("refs/tags/")}
    configured = parse_remote_config(sections["remotes"].stdout)
    for name, url in config.remotes.items():
        current = configured.get(name, {})
        remote = RemoteState(name=name, url=url, urls=current.get("url", []), pushurls=current.get("pushurl", []))
        section = sections.get(f"remote.{name}", Section(rc=None))
        if section.ok:
            remote.refs, remote.counts = parse_remote(section.stdout)
        else:
            remote.error = git_error(section)
        state.remotes[name] = remote
    return state


# --- the push plan ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RefSync:
    """One ref on one remote: what a push would do. ahead/behind: commits only local / only remote."""

    remote: str
    ref: str  # refs/heads/<branch> or refs/tags/<tag>
    local: str | None
    remote_id: str | None
    status: str  # see the module docstring
    ahead: int | None = None
    behind: int | None = None

    @property
    def short(self) -> str:
        return self.ref.removeprefix("refs/heads/").removeprefix("refs/tags/")

    @property
    def is_tag(self) -> bool:
        return self.ref.startswith("refs/tags/")

    @property
    def refspec(self) -> str:
        return f"{self.ref}:{self.ref}"  # never '+': a push that is not a fast-forward is refused

    def describe(self) -> str:
        what = f"tag {self.short}" if self.is_tag else f"branch {self.short}"
        where = f"remote {self.remote}: {what}"
        r, l = (self.remote_id or "")[:12], (self.local or "")[:12]
        if self.status == "diverged":
            return (f"{where}: diverged: local {self.ahead} ahead, {self.behind} behind (remote {r}, local {l}); "
                    f"not pushed (never forced): merge or rebase onto {self.remote}/{self.short}, then run again")
        if self.status == "behind":
            return (f"{where}: the remote has commits this repo lacks: local {self.ahead} ahead, {self.behind} "
                    f"behind (remote {r}, local {l}); not pushed: pull from {self.remote} first")
        if self.status == "unknown":
            return (f"{where}: the remote is at {r}, a commit this repo does not have (not fetched): "
                    f"a push would not be a fast-forward; not pushed")
        if self.status == "conflict":
            return f"{where}: the remote's tag is {r}, this repo's is {l}; not pushed (tags are never moved)"
        if self.status == "missing":
            return f"{what}: no such branch in {self.remote}'s source repo"
        return f"{where}: {self.status}"


def ref_sync(remote: RemoteState, branch: str, local: str | None) -> RefSync:
    ref = f"refs/heads/{branch}"
    remote_id = remote.refs.get(ref)
    if local is None:
        return RefSync(remote.name, ref, None, remote_id, "missing")
    if remote_id is None:
        return RefSync(remote.name, ref, local, None, "new")
    if remote_id == local:
        return RefSync(remote.name, ref, local, remote_id, "in sync", 0, 0)
    counted_id, counts = remote.counts.get(branch, (remote_id, None))
    if counted_id != remote_id or counts is None:
        return RefSync(remote.name, ref, local, remote_id, "unknown")
    return with_counts(RefSync(remote.name, ref, local, remote_id, "unknown"), *counts)


def with_counts(sync: RefSync, ahead: int, behind: int) -> RefSync:
    """A branch's status from `rev-list --left-right --count local...remote`."""
    status = "diverged" if ahead and behind else "behind" if behind else "ahead" if ahead else "in sync"
    return RefSync(sync.remote, sync.ref, sync.local, sync.remote_id, status, ahead, behind)


def sync_plan(state: RepoState, config: ConfigRepo) -> dict[str, list[RefSync]]:
    """Per remote (that could be listed), every configured branch and every pushable annotated tag."""
    plan: dict[str, list[RefSync]] = {}
    branches = state.branches_of(config)
    for name, remote in state.remotes.items():
        if remote.error is not None:
            continue
        syncs = [ref_sync(remote, branch, state.branches.get(branch)) for branch in branches]
        if config.push_tags:
            carried = set()
            for sync in syncs:
                if sync.status in ("in sync", *PUSHED):
                    carried |= state.merged.get(sync.short, set())
            for tag in sorted(carried):
                info = state.tags.get(tag)
                if info is None or not info.annotated:
                    continue
                ref = f"refs/tags/{tag}"
                remote_id = remote.refs.get(ref)
                status = "new" if remote_id is None else "in sync" if remote_id == info.object else "conflict"
                syncs.append(RefSync(name, ref, info.object, remote_id, status))
        plan[name] = syncs
    return plan


def problems(state: RepoState, config: ConfigRepo, plan: Mapping[str, list[RefSync]]) -> list[str]:
    """Everything that keeps the repo from being fully pushed, one line each (unknown commits excluded:
    the push operation fetches and counts them first)."""
    out = []
    if not state.branches_of(config):
        out.append("HEAD is detached and config_repo.branches is not set: no branch to push")
    for branch in state.branches_of(config):
        if branch not in state.branches:
            out.append(f"branch {branch}: not in the local repo {config.path} (config_repo.branches)")
    for name, remote in state.remotes.items():
        if remote.error is not None:
            out.append(f"remote {name} ({remote.url}): cannot list it: {remote.error}")
    for syncs in plan.values():
        out += [sync.describe() for sync in syncs if sync.status in PROBLEMS and sync.status not in ("missing", "unknown")]
    return out


# --- commands -----------------------------------------------------------------------------------------

def remote_commands(remote: RemoteState, config: ConfigRepo) -> list[str]:
    """Make the remote exist with its URL for fetch and push (add, or set the url, drop a pushurl)."""
    if not remote.exists:
        return [config.git("remote", "add", remote.name, remote.url)]
    commands = []
    if remote.urls != [remote.url]:
        commands.append(config.git("config", "--replace-all", f"remote.{remote.name}.url", remote.url))
    if remote.pushurls and remote.pushurls != [remote.url]:
        commands.append(config.git("config", "--unset-all", f"remote.{remote.name}.pushurl"))
    return commands


def push_command(remote: RemoteState, config: ConfigRepo, syncs: Iterable[RefSync]) -> str:
    """`git push` of exactly these refs, never forced. Through the remote's name when it is configured
    with this URL (so `refs/remotes/<name>/*` follow), else to the URL."""
    target = remote.name if remote.configured else remote.url
    return config.remote_git("push", target, *[sync.refspec for sync in syncs])


def fetch_count_command(remote: RemoteState, config: ConfigRepo, sync: RefSync) -> str:
    """Fetch a branch whose remote commit is unknown locally into refs/remotes/<remote>/<branch>, then
    print `AHEAD<TAB>BEHIND` of local against it."""
    target = remote.name if remote.configured else remote.url
    tracking = f"refs/remotes/{remote.name}/{sync.short}"
    fetch = config.remote_git("fetch", "--quiet", "--no-tags", target, f"+{sync.ref}:{tracking}")
    count = config.git("rev-list", "--left-right", "--count", f"{sync.local}...{sync.remote_id}")
    return f"{fetch} && {count}"


def parse_counts(lines: Iterable[str]) -> tuple[int, int] | None:
    for line in reversed([line for line in lines if line.strip()]):
        words = line.split()
        if len(words) == 2 and all(word.isdigit() for word in words):
            return int(words[0]), int(words[1])
    return None


def tag_command(config: ConfigRepo, tag: str, message: str, commit: str) -> str:
    return config.git("tag", "--annotate", "--message", message, tag, commit)


def tag_sections(config: ConfigRepo, tag: str, ref: str) -> dict[str, str]:
    """What release_tag needs, in one command: the repo, the tag name's validity, the existing tag,
    the commit `ref` names, and whether git knows who the tagger is."""
    return {
        "repo": config.git("rev-parse", "--absolute-git-dir"),
        "valid": sh_join(["git", "check-ref-format", f"refs/tags/{tag}"]),
        "tag": config.git("for-each-ref", "--format=%(refname)%09%(objectname)%09%(objecttype)%09%(*objectname)"
                          "%09%(contents:subject)", f"refs/tags/{tag}"),
        "target": config.git("rev-parse", "-q", "--verify", "--end-of-options", f"{ref}^{{commit}}"),
        "ident": config.git("var", "GIT_COMMITTER_IDENT"),
    }


@dataclass
class TagState(JsonFact):
    error: str | None = None  # the repo cannot be read
    valid: bool = True
    existing: Tag | None = None
    subject: str = ""
    target: str | None = None  # the commit `ref` names
    ident_error: str | None = None


def parse_tag_state(lines: Iterable[str], tag: str) -> TagState:
    sections = parse_sections(lines)
    if not sections["repo"].ok:
        return TagState(error=git_error(sections["repo"]))
    state = TagState(valid=sections["valid"].ok)
    for line in sections["tag"].stdout:
        words = line.split("\t", 4)
        if len(words) == 5 and words[0] == f"refs/tags/{tag}":  # the pattern also matches refs/tags/<tag>/...
            ref, obj, kind, peeled, subject = words
            state.existing = Tag(obj, kind, peeled or obj)
            state.subject = subject
    target = sections["target"]
    state.target = (target.text.strip() or None) if target.ok else None
    if not sections["ident"].ok:
        state.ident_error = git_error(sections["ident"])
    return state
