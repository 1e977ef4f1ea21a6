"""Host identity ("system state") snapshots: which files, their digest, the state archive, the restore.

The files of `system_state.paths` (globs allowed) are stored as a state archive
`<archiveBaseName>-state-<UTC timestamp>` in the repo of `system_state.job`, only when
their digest (content, type, owner, mode; not times) changed since the last state archive.
Everything here is pure: `digest_script` is run by facts/state.py, the commands by tasks/state.py.

>>> settings = StateSettings.from_data({"system_state": {}, "borgbackup": {"jobs": {"system": {}}}})
>>> settings.job, settings.paths[0]
('system', '/etc/machine-id')
>>> glob_word("/etc/ssh/ssh_host_*"), glob_word("/srv/my dir/*.conf")
('/etc/ssh/ssh_host_*', "'/srv/my dir/'*.conf")
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pyinfra_backup.borg import STATE_DIR
from pyinfra_backup.jsonable import JsonFact
from pyinfra_backup.records import job_dir
from pyinfra_backup.shell import atomic_record, sh_join

DEFAULT_PATHS = (
    "/etc/machine-id", "/etc/ssh/ssh_host_*", "/var/lib/nixos", "/var/lib/bluetooth",
    "/var/lib/NetworkManager", "/etc/NetworkManager/system-connections",
)
BACKUP_IDENTITY = f"{STATE_DIR}/ssh"  # the host's backup key and pinned server keys: always in a state archive
DEFAULT_AGE_DIR = "recovery"
RECORD = "last-state.json"
RESTORE_DIR = f"{STATE_DIR}/state"  # staging-<ts>/ (removed after use) and replaced-<ts>/ (kept)
_GLOB = re.compile(r"([*?\[\]])")


@dataclass(frozen=True)
class StateSettings:
    """`system_state` with defaults; `from_data` gives None for a host without `system_state`."""

    paths: tuple[str, ...]
    job: str | None
    age_recipients: tuple[str, ...] = ()
    age_dir: str = DEFAULT_AGE_DIR

    @classmethod
    def from_data(cls, data: Mapping) -> "StateSettings | None":
        state = data.get("system_state")
        if state is None:
            return None
        jobs = sorted(((data.get("borgbackup") or {}).get("jobs") or {}))
        job = state.get("job") or (jobs[0] if len(jobs) == 1 else None)
        return cls(
            paths=(*(state.get("paths") or DEFAULT_PATHS), BACKUP_IDENTITY),
            job=job,
            age_recipients=tuple(state.get("ageRecipients") or ()),
            age_dir=state.get("ageDir") or DEFAULT_AGE_DIR,
        )


def glob_word(pattern: str) -> str:
    """A shell word that expands `*`, `?` and `[...]` of the pattern and nothing else."""
    return "".join(part if _GLOB.fullmatch(part) else shlex.quote(part) for part in _GLOB.split(pattern) if part)


def digest_script(patterns: Iterable[str], literal: bool = False) -> str:
    """One sh script listing what the patterns name: `R <root>` per existing path a pattern expands
    to, `S <pattern>` for one that names nothing, then `E type uid gid mode path` (+ `L target`
    for a symlink) for every entry below the roots (find -P: symlinks are not followed, as borg),
    then `H sha256  path` per regular file. A file that cannot be read is named on stderr.
    `literal`: the patterns are plain paths (no glob expansion)."""
    word = shlex.quote if literal else glob_word
    lines = ["export LC_ALL=C", "set --"]
    for pattern in patterns:
        lines.append(
            f"for _p in {word(pattern)}; do if [ -e \"$_p\" ] || [ -L \"$_p\" ]; then set -- \"$@\" \"$_p\"; "
            f"printf 'R\\t%s\\n' \"$_p\"; else printf 'S\\t%s\\n' {shlex.quote(pattern)}; fi; done"
        )
    lines.append("[ $# -gt 0 ] || exit 0")
    lines.append("find \"$@\" -printf 'E\\t%y\\t%U\\t%G\\t%m\\t%p\\n' -type l -printf 'L\\t%l\\n'")
    lines.append("find \"$@\" -type f -exec sha256sum -- {} + | sed 's/^/H\\t/'")
    return "\n".join(lines)


@dataclass(frozen=True)
class Entry(JsonFact):
    """One file, directory or symlink: `path` without the leading slash, as borg stores it."""

    path: str
    type: str  # f d l p s c b (find's letters; borg's "-" is "f")
    uid: int
    gid: int
    mode: int  # permission bits incl. setuid/setgid/sticky
    sha256: str = ""  # regular files
    target: str = ""  # symlinks

    def line(self) -> str:
        return f"{self.path}\0{self.type}\0{self.uid}:{self.gid}\0{self.mode:o}\0{self.sha256}\0{self.target}\n"

    def to_json(self) -> dict:  # `pyinfra INVENTORY fact facts.state.StateDigest ...` prints it
        return {"type": self.type, "owner": f"{self.uid}:{self.gid}", "mode": f"{self.mode:04o}",
                **({"sha256": self.sha256} if self.sha256 else {}), **({"target": self.target} if self.type == "l" else {})}


@dataclass(frozen=True)
class LiveState(JsonFact):
    """What the digest script found on the host, and the digest of the last state archive."""

    hostname: str
    entries: dict[str, Entry]
    roots: tuple[str, ...]  # existing paths the patterns expanded to, outermost only (borg create's args)
    skipped: tuple[str, ...]  # patterns that named nothing
    unreadable: tuple[str, ...]  # error lines: a path that could not be read
    recorded: dict | None = None  # last-state.json: {"digest", "create": borg create --json}

    @property
    def digest(self) -> str:
        return state_digest(self.entries.values())

    def to_json(self) -> dict:
        return {"hostname": self.hostname, "digest": self.digest, "recorded_digest": self.recorded_digest,
                "recorded_archive": self.recorded_archive, "roots": list(self.roots), "skipped": list(self.skipped),
                "unreadable": list(self.unreadable), "entries": {f"/{p}": e for p, e in sorted(self.entries.items())}}

    @property
    def recorded_digest(self) -> str | None:
        return (self.recorded or {}).get("digest")

    @property
    def recorded_archive(self) -> str | None:
        return ((self.recorded or {}).get("create") or {}).get("archive", {}).get("name")


def state_digest(entries: Iterable[Entry]) -> str:
    """sha256 over every entry's path, type, owner, mode and content (or link target), in path order."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.path):
        digest.update(entry.line().encode(errors="surrogateescape"))
    return digest.hexdigest()


def _outermost(paths: Iterable[str]) -> tuple[str, ...]:
    kept: list[str] = []
    for path in sorted(set(paths), key=lambda p: p.split("/")):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return tuple(kept)


def _unescape_sum(line: str) -> tuple[str, str]:
    """sha256sum's `HASH  PATH`; a leading backslash means `\\\\` and `\\n` are escaped in PATH."""
    escaped = line.startswith("\\")
    body = line[1:] if escaped else line
    digest, path = body[:64], body[66:]
    if escaped:
        path = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], path)
    return digest, path


def parse_digest_output(lines: list[str], errors: list[str]) -> tuple[dict[str, Entry], tuple, tuple, tuple]:
    """(entries, roots, skipped, unreadable) from `digest_script`'s stdout and stderr lines.
    A line without a tag continues the previous path (a file name with a newline)."""
    raw: dict[str, dict] = {}
    roots, skipped, hashes = [], [], {}
    last: dict | None = None
    for line in lines:
        tag, _, rest = line.partition("\t")
        if tag == "E":
            kind, uid, gid, mode, path = rest.split("\t", 4)
            last = raw[path.lstrip("/")] = {"type": kind, "uid": int(uid), "gid": int(gid), "mode": int(mode, 8)}
            last["path"] = path.lstrip("/")
        elif tag == "L" and last is not None:
            last["target"] = rest
        elif tag == "H":
            digest, path = _unescape_sum(rest)
            hashes[path.lstrip("/")] = digest
        elif tag == "R":
            roots.append(rest)
        elif tag == "S":
            skipped.append(rest)
        elif last is not None:  # continuation of a name with a newline
            old = last.pop("path")
            del raw[old]
            last["path"] = f"{old}\n{line}"
            raw[last["path"]] = last
    entries = {path: Entry(sha256=hashes.get(path, ""), **fields) for path, fields in raw.items()}
    unreadable = tuple(line.strip() for line in errors if line.strip())
    return entries, _outermost(roots), tuple(dict.fromkeys(skipped)), unreadable


# --- the state archive -----------------------------------------------------------------------------


def state_base(base_name: str) -> str:
    """`<archiveBaseName>-state`: `create_argv` appends `-<UTC timestamp>`."""
    return f"{base_name}-state"


def state_glob(base_name: str) -> str:
    """The job's state archives, for `borg list --glob-archives`."""
    return f"{state_base(base_name)}-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*"


def record_path(job: str) -> str:
    return f"{job_dir(job)}/{RECORD}"


def snapshot_command(job: str, borg_create: str, digest: str) -> str:
    """Run `borg create --json` of the state archive from `/`; only when it succeeds (exit 0: a
    warning means a file is missing from the archive) remember its digest in last-state.json."""
    d = sh_join([job_dir(job)])
    tmp, log = '"$_pbk_c"', f"{d}/state-create.log"  # borg's JSON: a temp file of this run's own
    record = atomic_record(record_path(job), f"printf '{{\"digest\": \"%s\", \"create\": ' {sh_join([digest])}; cat {tmp}; echo '}}'")
    return (
        f"mkdir -p {d} && cd / && _pbk_c=$(mktemp {sh_join([record_path(job)])}.XXXXXX) || exit 2; "
        f"{{ {borg_create} > {tmp} 2> {log}; _rc=$?; }}; "
        f"if [ $_rc -eq 0 ]; then {record}; rm -f {tmp}; "
        f"else tail -n 3 {log} >&2; rm -f {tmp}; exit $_rc; fi"
    )


def parse_record(text: str | None) -> dict | None:
    try:
        return json.loads(text) if text and text.strip() else None
    except json.JSONDecodeError:
        return None  # a damaged record: the next run stores a state archive again


# --- reading a state archive back ------------------------------------------------------------------

_PERMS = [(0o400, "r"), (0o200, "w"), (0o100, "x"), (0o040, "r"), (0o020, "w"), (0o010, "x"),
          (0o004, "r"), (0o002, "w"), (0o001, "x")]
_SPECIAL = {2: ("s", "S", 0o4000), 5: ("s", "S", 0o2000), 8: ("t", "T", 0o1000)}


def parse_filemode(text: str) -> int:
    """borg's `-rwsr-x---` back to 0o4750.

    >>> oct(parse_filemode("drwxr-xr-t"))
    '0o1755'
    """
    mode = 0
    for index, ((bit, letter), char) in enumerate(zip(_PERMS, text[1:10])):
        if char == letter:
            mode |= bit
        elif index in _SPECIAL and char in _SPECIAL[index][:2]:
            mode |= _SPECIAL[index][2] | (bit if char == _SPECIAL[index][0] else 0)
    return mode


def archive_script(env_argv: str, url: str, base_name: str, archive: str) -> str:
    """List the job's state archives (names, oldest first), then, after `::items`, the items of
    `archive` (`latest`: the newest) as borg JSON lines with their sha256. `env_argv` is the
    job's `borg` with its environment, e.g. `TZ=UTC BORG_RSH=... borg`."""
    if archive == "latest":
        pick = 'printf "%s\\n" "$_n" | tail -n 1'
    else:  # a name that is not a state archive of the job lists no items
        pick = f'printf "%s\\n" "$_n" | grep -xF -- {sh_join([archive])}'
    return (
        f"_n=$({env_argv} list --short --glob-archives {sh_join([state_glob(base_name)])} {sh_join([url])}) "
        f"|| exit $?; printf '%s\\n' \"$_n\"; _a=$({pick} || true); [ -n \"$_a\" ] || exit 0; echo '::items'; "
        f"{env_argv} list --json-lines --format '{{sha256}}' {sh_join([url])}::\"$_a\""
    )


def parse_archive_output(lines: list[str]) -> tuple[list[str], dict[str, Entry]]:
    """(state archive names oldest first, {path: Entry} of the chosen archive)."""
    names, items, seen_marker = [], {}, False
    for line in lines:
        if line == "::items":
            seen_marker = True
        elif not seen_marker:
            if line.strip():
                names.append(line.strip())
        elif line.strip():
            item = json.loads(line)
            kind = "f" if item["type"] in ("-", "h") else item["type"]
            items[item["path"]] = Entry(
                path=item["path"], type=kind, uid=int(item["uid"]), gid=int(item["gid"]),
                mode=parse_filemode(item["mode"]), sha256=item.get("sha256") or "",
                target=(item.get("linktarget") or "") if kind == "l" else "",
            )
    return names, items


# --- restore ---------------------------------------------------------------------------------------


def restore_rank(path: str) -> int:
    """uid/gid maps and machine-id first (NixOS' activation reads them), then the SSH host keys
    (sshd's identity and agenix's decryption key), then the rest."""
    if path == "etc/machine-id" or path == "var/lib/nixos" or path.startswith("var/lib/nixos/"):
        return 0
    if path.startswith("etc/ssh/ssh_host_"):
        return 1
    return 2


def _same(archived: Entry, live: Entry | None) -> bool:
    if live is None:
        return False
    if archived.type == "l":  # a symlink's own mode cannot be set; only its owner and target count
        return (live.type, live.uid, live.gid, live.target) == ("l", archived.uid, archived.gid, archived.target)
    return archived == live


def restore_plan(archived: Mapping[str, Entry], live: Mapping[str, Entry]) -> list[Entry]:
    """The archive's entries that differ from the live ones, in restore order (parents first).
    Live files the archive does not hold are left alone."""
    todo = [entry for path, entry in archived.items() if not _same(entry, live.get(path))]
    return sorted(todo, key=lambda e: (restore_rank(e.path), e.path.split("/")))


def roots_of(paths: Iterable[str]) -> list[str]:
    """The archive's top-level paths, absolute: what the live digest must read to compare."""
    return ["/" + path for path in _outermost(paths)]


_RESTORE_FUNCTIONS = r"""
aside() { if [ -e "$R/$1" ] || [ -L "$R/$1" ]; then mkdir -p "$A/$(dirname "$1")" && cp -a "$R/$1" "$A/$1"; fi; }
putdir() {
  if [ -L "$R/$1" ] || { [ -e "$R/$1" ] && [ ! -d "$R/$1" ]; }; then aside "$1" && rm -f "$R/$1"; fi
  mkdir -p "$R/$1" && chown -h "$2" "$R/$1" && chmod "$3" "$R/$1"
}
put() {
  if [ -d "$R/$1" ] && [ ! -L "$R/$1" ]; then mkdir -p "$A/$(dirname "$1")" && mv "$R/$1" "$A/$1"; else aside "$1"; fi
  mkdir -p "$R/$(dirname "$1")" && cp -a "$S/$1" "$R/$1.pbk-restore" && mv -fT "$R/$1.pbk-restore" "$R/$1"
}
"""


def restore_script(todo: list[Entry], extract: str, stamp: str, root: str = "/", work: str = RESTORE_DIR) -> str:
    """A sh script: `extract` (borg extract, run inside the staging dir) the archive to
    `<work>/staging-<stamp>`, then put each entry of `todo` in place in order: files and
    symlinks copied next to their target and renamed over it (atomic), directories made with
    their owner and mode. What is replaced is first copied to `<work>/replaced-<stamp>/`.
    `root`: where the archive's paths live (`/`; elsewhere for tests)."""
    stage, aside = f"{work}/staging-{stamp}", f"{work}/replaced-{stamp}"
    lines = [
        "set -e", "umask 077", f"R={shlex.quote(root.rstrip('/'))}",
        f"S={shlex.quote(stage)}", f"A={shlex.quote(aside)}", _RESTORE_FUNCTIONS.strip(),
        f"install -d -m 0700 {shlex.quote(work)}", 'mkdir "$S" "$A"', """trap 'cd / && rm -rf "$S"' EXIT""",
        f'cd "$S" && {extract}', "cd /",
    ]
    for entry in todo:
        if entry.type == "d":
            lines.append(f"putdir {shlex.quote(entry.path)} {entry.uid}:{entry.gid} {entry.mode:05o}")
        else:
            lines.append(f"put {shlex.quote(entry.path)}")
    lines.append('rmdir "$A" 2>/dev/null || echo "replaced files kept in $A"')
    return "\n".join(lines)


def follow_up(todo: Iterable[Entry]) -> list[str]:
    """What must follow a restore of these entries, in words for the operator."""
    paths = [entry.path for entry in todo]
    notes = []
    if any(restore_rank(p) == 0 and p != "etc/machine-id" for p in paths):
        notes.append("on NixOS: restore /var/lib/nixos before the first switch/activation on this host "
                     "(it holds the uid/gid maps the activation assigns from)")
    if "etc/machine-id" in paths:
        notes.append("reboot: systemd, journald and D-Bus read /etc/machine-id at boot")
    if any(restore_rank(p) == 1 for p in paths):
        notes.append("restart sshd (systemctl restart sshd; open sessions stay): OpenSSH 9.8+ serves the host keys "
                     "it loaded at start, up to 9.7 (Debian 12: 9.2) new connections already use the restored ones")
        notes.append("on NixOS: switch (or reboot) so that agenix decrypts with the restored host key")
    for unit, prefix in (("NetworkManager", "etc/NetworkManager/"), ("NetworkManager", "var/lib/NetworkManager"),
                         ("bluetooth", "var/lib/bluetooth")):
        note = f"restart {unit} to use its restored state"
        if any(p.startswith(prefix) for p in paths) and note not in notes:
            notes.append(note)
    return notes


# --- the age-encrypted copy ------------------------------------------------------------------------


def tar_command(roots: Iterable[str]) -> str:
    """The state files as a tar stream (numeric owners, modes), base64 on stdout: the operator
    reads it through pyinfra's text output and encrypts it in memory."""
    relative = [root.lstrip("/") for root in roots]
    tar = f"tar --numeric-owner -cpf - -C / -- {sh_join(relative)}"
    # sh has no pipefail (dash): each side of the pipe reports its own status on fd 4; a failed tar
    # (a file gone or unreadable) must fail the copy, not hand over a truncated stream
    return (f'exec 3>&1; _st=$( {{ {{ {tar}; echo "tar=$?" >&4; }} | {{ base64 -w 76 >&3; echo "base64=$?" >&4; }}; }} 4>&1 ); '
            'case "$_st" in *tar=0*) case "$_st" in *base64=0*) exit 0;; esac;; esac; '
            'echo "the tar stream failed:" $_st >&2; exit 1')


def copy_key(digest: str, recipients: Iterable[str]) -> str:
    """What an encrypted copy stands for: the files' digest and the recipients (a change of either
    writes a new copy). 16 hex digits, part of the copy's file name."""
    normal = sorted({" ".join(r.split()[:2]) for r in recipients})
    return hashlib.sha256("\n".join([digest, *normal]).encode()).hexdigest()[:16]


def copy_name(base_name: str, stamp: str, key: str) -> str:
    """`<archiveBaseName>-state-<UTC timestamp>-<key>.tar.age`."""
    return f"{state_base(base_name)}-{stamp}-{key}.tar.age"

