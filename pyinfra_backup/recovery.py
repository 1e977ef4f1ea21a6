"""Pure parts of a recovery run (deploys/recover.py): the config checkout and the RTO summary.

The config repo reaches a host being rebuilt as a git bundle made on the operator's machine
(`recover_config_source`, a clone of the config repo there) and streamed over the host's SSH
connection, so the host needs no credential for any git remote:

    argv = bundle_argv("/home/me/fleet-config")             # git bundle create - --all
    script = checkout_script("/etc/nixos", commit, {"origin": "git@git.example.org:fleet.git"})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pyinfra_backup.shell import sh_join


def bundle_argv(source: str) -> list[str]:
    """Every ref of the operator's clone, as a bundle on stdout."""
    return ["git", "-C", source, "bundle", "create", "-", "--all"]


def resolve_argv(source: str, ref: str) -> list[str]:
    """The commit `ref` (a tag, branch or commit) names in the operator's clone."""
    return ["git", "-C", source, "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}"]


def checkout_script(path: str, commit: str, remotes: Mapping[str, str]) -> str:
    """The host's side: a bundle on stdin; `path` becomes a clone of it with `commit` checked out
    (detached) and the config repo's remotes set. An existing checkout is fetched into, never
    reset: local changes make it fail (nothing is lost), as `git checkout` does."""
    lines = [
        "set -eu",
        f"path={sh_join([path])}",
        'tmp=$(mktemp -d); trap \'rm -rf "$tmp"\' EXIT; cat > "$tmp/config.bundle"',
        'if [ -e "$path/.git" ]; then git -C "$path" fetch -q "$tmp/config.bundle" "+refs/*:refs/recover/*"',
        'elif [ -z "$(ls -A "$path" 2>/dev/null)" ]; then git clone -q --no-checkout "$tmp/config.bundle" "$path" && '
        'git -C "$path" remote remove origin',
        'else echo "$path exists and is not a git checkout: refusing to replace it" >&2; exit 1; fi',
        f"git -C \"$path\" -c advice.detachedHead=false checkout -q --detach {sh_join([commit])}",
    ]
    for name, url in sorted(remotes.items()):
        lines.append(f'git -C "$path" remote add {sh_join([name, url])} 2>/dev/null || '
                     f'git -C "$path" remote set-url {sh_join([name, url])}')
    lines.append(f"echo \"checked out {commit[:12]} in $path\"")
    return "\n".join(lines)


@dataclass
class Step:
    """One recovery step on one host: what it restored from (or checked), how long it took."""

    name: str
    source: str
    seconds: float | None = None  # None: still running, or it failed
    result: str = "restored"  # or "no change", "checked"


@dataclass
class Summary:
    host: str
    steps: list[Step] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The table a recovery run ends with. RTO: the steps' time added up (the run's own start-up
        and the other hosts' share of each step come on top)."""
        width = max((len(step.name) for step in self.steps), default=4)
        out = []
        for step in self.steps:
            took, result = ("", "FAILED") if step.seconds is None else (f"{step.seconds:.1f}s", step.result)
            out.append(f"{step.name:<{width}}  {took:>7}  {result:<9}  {step.source}")
        done = sum(step.seconds for step in self.steps if step.seconds is not None)
        failed = any(step.seconds is None for step in self.steps)
        out.append(f"{'RTO':<{width}}  {done:>6.1f}s{'  incomplete: a step failed' if failed else ''}")
        return out
