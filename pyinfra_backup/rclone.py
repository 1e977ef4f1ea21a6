"""rclone remotes defined by the environment, and rclone's JSON log read back.

A remote is never written to a config file nor put in argv: its type and plain
options become `RCLONE_CONFIG_<REMOTE>_<OPTION>` variables, and each secret is
the stdout of a command run where rclone runs, obscured with `rclone obscure -`
(stdin) when rclone wants it obscured, and exported in the same shell:

>>> remote = Remote("offsite", "sftp", {"host": "vault", "port": 2222}, {"key_file_pass": "cat /run/k"})
>>> print(remote.prelude())  # doctest: +NORMALIZE_WHITESPACE
export RCLONE_CONFIG_OFFSITE_TYPE=sftp RCLONE_CONFIG_OFFSITE_HOST=vault RCLONE_CONFIG_OFFSITE_PORT=2222
&& { _v=$(cat /run/k) || { echo 'borgbackup.offsite.secretCommands.key_file_pass: the command failed (exit status '$?')' >&2;
exit 2; }; [ -n "$_v" ] || { echo 'borgbackup.offsite.secretCommands.key_file_pass: the command printed nothing' >&2;
exit 2; }; _v=$(printf '%s\\n' "$_v" | rclone obscure -) || exit 2; RCLONE_CONFIG_OFFSITE_KEY_FILE_PASS=$_v;
export RCLONE_CONFIG_OFFSITE_KEY_FILE_PASS; unset _v; }
>>> sync_stats(['{"level":"info","msg":"x","stats":{"bytes":10,"transfers":1,"deletes":0}}'])["transfers"]
1
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from collections.abc import Iterable, Mapping

from pyinfra_backup.shell import sh_join

# Options rclone 1.60 stores obscured (`IsPassword` in `rclone config providers`), by backend.
# tests/unit/test_rclone.py compares this table with the installed rclone.
PASSWORD_OPTIONS = {
    "cache": {"plex_password"},
    "crypt": {"password", "password2"},
    "fichier": {"file_password", "folder_password"},
    "ftp": {"pass"},
    "koofr": {"password"},
    "mailru": {"pass"},
    "netstorage": {"secret"},
    "opendrive": {"password"},
    "pcloud": {"password"},
    "seafile": {"pass", "library_key"},
    "sftp": {"pass", "key_file_pass"},
    "sia": {"api_password"},
    "smb": {"pass"},
    "webdav": {"pass"},
}

# Flags every call shares: no config file (the remote lives in the environment only) and a JSON log.
COMMON_FLAGS = ("--config", "/dev/null", "--use-json-log")


def env_name(remote: str, option: str) -> str:
    """rclone's variable for a remote's option: `env_name("offsite", "key_file")` -> RCLONE_CONFIG_OFFSITE_KEY_FILE."""
    return f"RCLONE_CONFIG_{remote}_{option}".upper().replace("-", "_")


def _plain(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Remote:
    """A remote defined by the environment; `secret_commands` maps an option to a command printing it."""

    name: str
    type: str
    options: Mapping[str, object] = field(default_factory=dict)
    secret_commands: Mapping[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The non-secret variables (type and plain options)."""
        env = {env_name(self.name, "type"): self.type}
        env.update({env_name(self.name, key): _plain(value) for key, value in sorted(self.options.items())})
        return env

    def _secret(self, option: str, command: str) -> str:
        var = env_name(self.name, option)
        failed = shlex.quote(f"borgbackup.offsite.secretCommands.{option}: the command failed (exit status ")
        empty = shlex.quote(f"borgbackup.offsite.secretCommands.{option}: the command printed nothing")
        steps = [f"_v=$({command}) || {{ echo {failed}$?')' >&2; exit 2; }}",
                 f"[ -n \"$_v\" ] || {{ echo {empty} >&2; exit 2; }}"]
        if option in PASSWORD_OPTIONS.get(self.type, ()):
            steps.append("_v=$(printf '%s\\n' \"$_v\" | rclone obscure -) || exit 2")
        steps += [f"{var}=$_v", f"export {var}", "unset _v"]
        return "{ " + "; ".join(steps) + "; }"

    def prelude(self) -> str:
        """Shell that defines the remote in the environment of what follows it (`prelude() && rclone ...`).
        Secrets only pass through shell variables: printf is a builtin, so no argv ever holds one."""
        exports = "export " + " ".join(f"{key}={shlex.quote(value)}" for key, value in self.env().items())
        return " && ".join([exports, *(self._secret(o, c) for o, c in sorted(self.secret_commands.items()))])

    def describe(self) -> str:
        """A human name of where the remote is: `sftp vault@10.0.0.9:2222` (no secrets: plain options only)."""
        host = self.options.get("host")
        if not host:
            return self.type
        user = f"{self.options['user']}@" if self.options.get("user") else ""
        port = f":{self.options['port']}" if self.options.get("port") else ""
        return f"{self.type} {user}{host}{port}"


def sync_argv(source: str, dest: str, excludes: Iterable[str] = (), backup_dir: str | None = None,
              extra: Iterable[str] = ()) -> list[str]:
    """`rclone sync` that logs each file it copies or deletes and its totals (JSON, `sync_stats`)."""
    argv = ["rclone", "sync", source, dest, *COMMON_FLAGS, "-v", "--stats", "1h", *extra]
    for pattern in excludes:
        argv += ["--exclude", pattern]
    if backup_dir:
        argv += ["--backup-dir", backup_dir]
    return argv


def check_argv(source: str, dest: str, excludes: Iterable[str] = (), extra: Iterable[str] = (),
               size_only: bool = False) -> list[str]:
    """`rclone check --one-way`: every source file is at dest with the same size and hash (or size only:
    listings, no file read)."""
    argv = ["rclone", "check", source, dest, *COMMON_FLAGS, "--one-way", *(["--size-only"] if size_only else []), *extra]
    for pattern in excludes:
        argv += ["--exclude", pattern]
    return argv


_STAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ")


def parse_log(lines: Iterable[str]) -> list[dict]:
    """rclone's `--use-json-log` lines as dicts; a plain line (a fatal error is printed as text) is
    kept as `{"level": "fatal", "msg": ...}` without its timestamp."""
    entries = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            entry = {"level": "fatal", "msg": _STAMP.sub("", line)}
        entries.append(entry)
    return entries


def sync_stats(lines: Iterable[str]) -> dict:
    """The final totals of a run (`bytes`, `transfers`, `deletes`, `checks`, `errors`, ...), {} if none."""
    stats = [entry["stats"] for entry in parse_log(lines) if isinstance(entry.get("stats"), dict)]
    return stats[-1] if stats else {}


def counted(lines: Iterable[str], what: str) -> int | None:
    """The N of rclone check's `N <what>` summary lines (`matching files`, `differences found`)."""
    for entry in parse_log(lines):
        words = str(entry.get("msg", "")).split(" ", 1)
        if len(words) == 2 and words[1] == what and words[0].isdigit():
            return int(words[0])
    return None


def hashed(lines: Iterable[str]) -> bool:
    """Whether rclone check compared hashes (else sizes only: the two sides share no hash type, e.g. an
    sftp account that cannot run md5sum)."""
    return not any("No common hash found" in str(entry.get("msg")) for entry in parse_log(lines))


def failure(lines: Iterable[str]) -> str | None:
    """Why a run failed, in a line: the first files in error with their reason (rclone's own last line
    only counts them), else the fatal error (e.g. the remote cannot be reached), else any error."""
    entries = parse_log(lines)
    files = [f"{e['object']}: {e['msg']}" for e in entries if e.get("level") == "error" and e.get("object")]
    if files:
        more = f" (and {len(files) - 3} more)" if len(files) > 3 else ""
        return "; ".join(files[:3]) + more
    for level in ("fatal", "error"):
        found = [str(e.get("msg")) for e in entries if e.get("level") == level]
        if found:
            return found[-1]
    return None


def command(remote: Remote, argv: list[str]) -> str:
    """A shell command running rclone with the remote defined (see `Remote.prelude`)."""
    return f"{remote.prelude()} && {sh_join(argv)}"
