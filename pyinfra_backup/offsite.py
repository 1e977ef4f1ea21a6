"""Offsite copies of a repo server's borg repos (the "1" of 3-2-1), with rclone.

Host data `borgbackup.offsite` of a repo server (inventory/schema.json)::

    {"type": "sftp", "path": "borg", "remote": "offsite",
     "options": {"host": "vault.example.org", "user": "borg-offsite", "key_file": "/root/.ssh/offsite",
                 "known_hosts_file": "/etc/ssh/ssh_known_hosts"},
     "secretCommands": {"key_file_pass": "cat /run/agenix/offsite"},
     "backupDir": "borg-deleted", "extraArgs": ["--bwlimit", "20M"]}

Each repo `<name>` of the server is mirrored to `<remote>:<path>/<name>` by `rclone sync`, then
verified by `rclone check --one-way` (sizes and hashes), and only then is the repo's fingerprint
recorded on the server (`/var/lib/pyinfra-backup/offsite/<name>`): every file's name, size and
mtime, borg's lock files left out. A repo whose fingerprint equals the recorded one for the same
destination is not copied, so a run with nothing new contacts no remote at all.

Why `sync` (a mirror) and not `copy`: the offsite repo must be a repo borg can use. After
`borg compact` the segments it removed would linger in a copy-only mirror, and a repo with stale
segments beside its index is not what borg wrote (`borg check` may find index mismatches, a
rebuild may resurrect deleted archives); it would also grow without bound. A client's
append-only key cannot delete segments, so what a mirror deletes is what the operator's own
prune + compact deleted. To keep those too, set `backupDir`: files the sync deletes or replaces
are moved there on the remote (`<backupDir>/<repo>/<UTC time>/`), never lost.

>>> offsite = Offsite.from_data({"borgbackup": {"offsite": {"type": "sftp", "path": "borg/", "options": {"host": "v"}}}})
>>> offsite.destination("host01")
'offsite:borg/host01'
>>> Fingerprint.parse("ab12 3 100")
Fingerprint(digest='ab12', files=3, bytes=100)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Mapping

from pyinfra_backup import rclone
from pyinfra_backup.borg import STATE_DIR
from pyinfra_backup.shell import Section, atomic_record, sectioned_script, sh_join

RECORDS_DIR = f"{STATE_DIR}/offsite"
EXCLUDES = ("/lock.exclusive/**", "/lock.roster")  # borg's lock: never copied, not in the fingerprint
NOT_A_REPO = 3  # exit status of the fingerprint of a directory without a borg repo (yet)
STEPS = ("lock", "sync", "check", "record")  # the sections of `copy_script`, in order


@dataclass(frozen=True)
class Fingerprint:
    """A cheap digest of a repo directory: sha256 of the sorted `name size mtime` lines, and totals."""

    digest: str
    files: int
    bytes: int

    @classmethod
    def parse(cls, text: str) -> "Fingerprint | None":
        words = text.split()
        if len(words) != 3 or not (words[1].isdigit() and words[2].isdigit()):
            return None
        return cls(words[0], int(words[1]), int(words[2]))


def fingerprint_command(path: str) -> str:
    """Prints `<sha256> <files> <bytes>` of the repo at `path`; exits NOT_A_REPO when it has no borg config."""
    repo = sh_join([path])
    listing = ("find . \\( -path ./lock.exclusive -o -path ./lock.roster \\) -prune -o -type f "
               "-printf '%P %s %T@\\n' | LC_ALL=C sort")
    return (
        f"cd {repo} 2>/dev/null && test -f config || exit {NOT_A_REPO}; _l=$({listing}); "
        "echo \"$(printf '%s\\n' \"$_l\" | sha256sum | cut -c1-64) "
        "$(printf '%s\\n' \"$_l\" | awk '{n++; b+=$2} END {printf \"%.0f %.0f\", n, b}')\""
    )


def record_path(repo: str) -> str:
    return f"{RECORDS_DIR}/{repo}"


@dataclass(frozen=True)
class Record:
    """What the server remembers of a repo's last verified copy."""

    destination: str  # Offsite.identity at the time
    time: datetime
    fingerprint: Fingerprint

    @classmethod
    def parse(cls, text: str) -> "Record | None":
        lines = text.strip().splitlines()
        if len(lines) != 3 or not lines[1].isdigit():
            return None
        fingerprint = Fingerprint.parse(lines[2])
        if fingerprint is None:
            return None
        return cls(lines[0], datetime.fromtimestamp(int(lines[1]), timezone.utc), fingerprint)


@dataclass(frozen=True)
class Offsite:
    """`borgbackup.offsite` of a repo server."""

    remote: rclone.Remote
    path: str
    backup_dir: str | None = None
    extra_args: tuple[str, ...] = ()
    verify: str = "full"  # or "size"

    @classmethod
    def from_data(cls, data: Mapping) -> "Offsite | None":
        spec = (data.get("borgbackup") or {}).get("offsite")
        if not spec:
            return None
        remote = rclone.Remote(
            name=spec.get("remote") or "offsite", type=spec["type"],
            options=dict(spec.get("options") or {}), secret_commands=dict(spec.get("secretCommands") or {}),
        )
        backup_dir = (spec.get("backupDir") or "").rstrip("/") or None
        return cls(remote, spec["path"].rstrip("/") or "/", backup_dir, tuple(spec.get("extraArgs") or ()),
                   spec.get("verify") or "full")

    def destination(self, repo: str) -> str:
        return f"{self.remote.name}:{self.path.rstrip('/')}/{repo}"

    def describe(self) -> str:
        """`offsite:borg (sftp vault@10.0.0.9)`: the remote, for messages."""
        return f"{self.remote.name}:{self.path} ({self.remote.describe()})"

    @property
    def identity(self) -> str:
        """Names the destination (type, plain options, path; not the secrets): a record made for another
        destination does not count."""
        spec = json.dumps([self.remote.type, dict(self.remote.options), self.path], sort_keys=True, default=str)
        return hashlib.sha256(spec.encode()).hexdigest()[:16]

    def backup_target(self, repo: str, stamp: str) -> str | None:
        return f"{self.remote.name}:{self.backup_dir}/{repo}/{stamp}" if self.backup_dir else None


def copy_script(offsite: Offsite, repo: str, path: str, stamp: str) -> str:
    """One remote command: copy one repo, verify it, record its fingerprint. Sections (STEPS) stop
    at the first failure; the fingerprint is recorded only when the repo did not change meanwhile."""
    fingerprint = fingerprint_command(path)
    dest = offsite.destination(repo)
    changed = sh_join(["the repo changed during the copy (a backup was running?): not recorded, "
                       "the next run copies it again"])
    absent = sh_join([f"no borg repo at {path}"])
    locked = sh_join([f"locked by a running borg ({path}/lock.exclusive): not copied, the next run tries again"])
    record = atomic_record(record_path(repo), f"printf '%s\\n%s\\n%s\\n' {offsite.identity} \"$(date +%s)\" \"$_fp\"")
    sections = {
        "lock": f'[ -n "$_fp" ] || {{ echo {absent} >&2; exit 1; }}; '
                f"test ! -e {sh_join([path + '/lock.exclusive'])} || {{ echo {locked} >&2; exit 1; }}",
        "sync": rclone.command(offsite.remote, rclone.sync_argv(
            path, dest, EXCLUDES, offsite.backup_target(repo, stamp), offsite.extra_args)),
        "check": rclone.command(offsite.remote, rclone.check_argv(
            path, dest, EXCLUDES, offsite.extra_args, size_only=offsite.verify == "size")),
        "record": f'[ "$({fingerprint})" = "$_fp" ] || {{ echo {changed} >&2; exit 1; }}; '
                  f"{record}",
    }
    return f"_fp=$({fingerprint}); " + sectioned_script(sections, stop_on_failure=True)


@dataclass(frozen=True)
class CopyResult:
    """How one repo's copy went: `failed_step` is None on success."""

    failed_step: str | None
    reason: str | None
    stats: dict
    matching: int | None
    hashed: bool = True

    @property
    def unreachable(self) -> bool:
        """The remote could not be reached or logged into: the other repos would fail the same way."""
        return self.failed_step in ("sync", "check") and "Failed to create file system" in (self.reason or "")

    def summary(self) -> str:
        stats = self.stats
        return (f"{stats.get('transfers', 0)} files copied ({_size(stats.get('bytes', 0))}), "
                f"{stats.get('deletes', 0)} deleted; rclone check: {self.matching} files match"
                + ("" if self.hashed else " (sizes only)"))


def copy_result(sections: Mapping[str, Section], verify: str = "full") -> CopyResult:
    """Read `copy_script`'s output back (`parse_sections`); `verify` as given to it."""
    sync = sections.get("sync")
    stats = rclone.sync_stats(sync.stderr) if sync else {}
    check = sections.get("check")
    matching = rclone.counted(check.stderr, "matching files") if check else None
    hashed = verify == "full" and (rclone.hashed(check.stderr) if check else True)
    for step in STEPS:
        section = sections.get(step)
        if section is None or not section.ok:
            if section is None:
                reason = "did not run (the command was cut short)"
            else:
                reason = rclone.failure(section.stderr) if step in ("sync", "check") else None
                reason = reason or section.error
            return CopyResult(step, reason, stats, matching, hashed)
    return CopyResult(None, None, stats, matching, hashed)


def _size(count: int) -> str:
    size, unit = float(count), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
