"""Idempotent operations on the config repo (`config_repo` host data): remotes, push, release tags.

    pyinfra -y INVENTORY deploys/config_repo.py                                   # remotes + push
    pyinfra -y INVENTORY tasks.git.release_tag v1.2.0 "Release 1.2.0" [ref=HEAD]  # then run the deploy

The repo lives on the host (the operator's machine is usually `@local`, any host works); its remotes
are reached from there with the host's ssh (`config_repo.ssh_command` becomes GIT_SSH_COMMAND when set).
Nothing is ever forced: a remote that has commits the local repo lacks is reported (remote, branch,
ahead/behind) and left as it is, the other remotes and refs are still pushed, and the host then fails.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import FunctionCommand

from facts.git import GitTag, forget, host_config, repo_state
from pyinfra_backup.git import (
    PUSHED, ConfigRepo, RefSync, RemoteState, RepoState, fetch_count_command, parse_counts, problems,
    push_command, remote_commands, sync_plan, tag_command, unsafe_ssh_command, with_counts,
)
from tasks.common import HostError, host_operation, run_in_operation


def _config() -> ConfigRepo:
    config = host_config(host)
    if config is None:
        raise HostError(f"{host.name}: config_repo: not set in the host data")
    if config.ssh_command and (reason := unsafe_ssh_command(config.ssh_command)):
        raise HostError(f"{host.name}: config_repo.ssh_command: {reason}")
    return config


def _state(config: ConfigRepo) -> RepoState:
    state = repo_state(host, config)
    if state.error is not None:
        raise HostError(f"{host.name}: config_repo.path: {config.path} is not a readable git repository: {state.error}")
    return state


def _fail(config: ConfigRepo, lines: list[str]) -> HostError:
    return HostError(f"{host.name}: config repo {config.path}:\n  " + "\n  ".join(lines))


@host_operation
def remotes():
    """Each remote of `config_repo.remotes` exists with its URL for fetch and push (`git remote add`,
    or its url replaced and a differing pushurl dropped). Remotes not in the data are left alone.

    Example: `remotes()`.
    """
    config = _config()
    state = _state(config)
    commands = [command for remote in state.remotes.values() for command in remote_commands(remote, config)]
    if not commands:
        host.noop(f"{len(config.remotes)} remotes configured: "
                  + ", ".join(f"{name} = {url}" for name, url in config.remotes.items()) if config.remotes
                  else "config_repo.remotes is empty")
        return
    forget(host)
    yield from commands


def _attempt(state, host, command: str, what: str, failures: list[str]) -> bool:
    """Run one command; a failure is recorded (and reported when the operation ends), not fatal, so the
    commands after it still run."""
    ok, output = run_in_operation(state, host, command)
    if not ok:
        lines = [line.strip() for line in output.stderr_lines if line.strip()]
        failures.append(f"{what}: failed: {'; '.join(lines[-3:]) or 'no output'}")
    else:
        host.log_styled(f"{what}: done", log_func=logger.info)
    return True


def _fetch_and_count(state, host, command: str, sync: RefSync, found: list[str]) -> bool:
    """A branch whose remote commit is unknown here: fetch it (remote-tracking ref only), count, report."""
    ok, output = run_in_operation(state, host, command)
    counts = parse_counts(output.stdout_lines) if ok else None
    if counts is None:
        lines = [line.strip() for line in output.stderr_lines if line.strip()]
        found.append(f"{sync.describe()}; fetching it to count failed: {'; '.join(lines[-3:]) or 'no output'}")
    else:
        found.append(with_counts(sync, *counts).describe())
    return True


def _summary(plan: dict[str, list[RefSync]]) -> str:
    parts = []
    for name, syncs in plan.items():
        branches = [f"{s.short} {s.local[:12]}" for s in syncs if not s.is_tag and s.local]
        tags = [s for s in syncs if s.is_tag]
        parts.append(f"{name}: {', '.join(branches) or 'no branch'}" + (f", {len(tags)} tag{'s' if len(tags) > 1 else ''}" if tags else ""))
    return "in sync: " + "; ".join(parts) if parts else "no remotes in config_repo.remotes"


@host_operation
def push():
    """Push the configured branches (default: the current one) and, with `push_tags`, the annotated tags
    they carry to every remote of `config_repo.remotes` where that is a fast-forward or new; never forced.

    Reads the repo and every remote in one command (facts.git.GitRepoSync). Nothing is pushed when every
    remote is in sync. A remote that could not be listed, a branch or tag that diverged, or a push that
    failed is reported at the end and fails the host, after every other remote has been pushed. A
    remote commit unknown here is fetched first (into refs/remotes/<remote>/<branch> only) to tell how
    far local and remote diverged.

    Example: `push()` after `remotes()`.
    """
    config = _config()
    state = _state(config)
    plan = sync_plan(state, config)
    found = problems(state, config, plan)
    pushes = {name: [s for s in syncs if s.status in PUSHED] for name, syncs in plan.items()}
    pushes = {name: syncs for name, syncs in pushes.items() if syncs}
    unknown = [s for syncs in plan.values() for s in syncs if s.status == "unknown"]
    if not pushes and not unknown:
        if found:
            raise _fail(config, found)
        host.noop(_summary(plan))
        return
    forget(host)
    failures: list[str] = []
    for name, syncs in pushes.items():
        remote: RemoteState = state.remotes[name]
        what = f"push to {name} ({', '.join(s.short for s in syncs)})"
        yield FunctionCommand(_attempt, (push_command(remote, config, syncs), what, failures), {})
    for sync in unknown:
        command = fetch_count_command(state.remotes[sync.remote], config, sync)
        yield FunctionCommand(_fetch_and_count, (command, sync, found), {})
    # The commands above have run by now: pyinfra runs each command as the operation yields it.
    if found or failures:
        raise _fail(config, failures + found)


@host_operation
def release_tag(tag: str, message: str, ref: str = "HEAD"):
    """An annotated tag `tag` on the commit `ref` names, with `message`. Exists there already: nothing
    to do; exists on another commit (or as a lightweight tag): an error, tags are never moved. Push it
    with `push()` (deploys/config_repo.py). The first argument is `tag`, not `name`: pyinfra reserves
    `name` for the operation's display name.

    Example: `release_tag("v1.2.0", "Release 1.2.0")`; CLI: `pyinfra -y INV tasks.git.release_tag v1.2.0 "Release 1.2.0"`.
    """
    config = _config()
    where = f"{host.name}: config repo {config.path}: tag {tag}"
    if not tag or tag.startswith("-") or not message.strip():
        raise HostError(f"{where}: expected a tag name not starting with '-' and a non-empty message")
    if ref.startswith("-"):
        raise HostError(f"{where}: ref {ref!r}: expected a revision, not an option")
    current = host.get_fact(GitTag, config=config, tag=tag, ref=ref)
    if current.error is not None:
        raise HostError(f"{host.name}: config_repo.path: {config.path} is not a readable git repository: {current.error}")
    if not current.valid:
        raise HostError(f"{where}: not a valid tag name (git check-ref-format)")
    if current.target is None:
        raise HostError(f"{where}: {ref!r} does not name a commit in the repo")
    existing = current.existing
    if existing is not None:
        if existing.commit != current.target:
            raise HostError(f"{where}: exists on commit {existing.commit[:12]} ({current.subject!r}), not on "
                            f"{ref} = {current.target[:12]}; tags are never moved: choose another name")
        if not existing.annotated:
            raise HostError(f"{where}: exists on {ref} = {current.target[:12]} as a lightweight tag, which push_tags "
                            f"does not push; delete it (git tag -d {tag}) to make it annotated")
        host.noop(f"tag {tag} exists on {ref} = {current.target[:12]} ({current.subject!r})")
        return
    if current.ident_error is not None:
        raise HostError(f"{where}: git does not know who the tagger is: set user.name and user.email "
                        f"(git config) on the host ({current.ident_error})")
    forget(host)
    yield tag_command(config, tag, message, current.target)
