"""borg argv, environment and output parsing, shared by facts/borg.py and tasks/borg.py.

A `Job` is one `borgbackup.jobs.<name>` entry with the NixOS defaults applied.
Every builder returns an argv list (one tuple per borg command, as borgmatic
does); callers quote it with `pyinfra_backup.shell`.

>>> job = Job.from_data("system", {"paths": ["/etc"], "repo": "/srv/repo",
...                                "encryption": {"mode": "none"}, "startAt": "daily"})
>>> create_argv(job, "host01-system")[:4]
['borg', 'create', '--compression', 'auto,zstd']
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from collections.abc import Mapping

from pyinfra_backup.jsonable import JsonFact

STATE_DIR = "/var/lib/pyinfra-backup"
BACKUP_KEY = f"{STATE_DIR}/ssh/id_ed25519"
KNOWN_HOSTS = f"{STATE_DIR}/ssh/known_hosts"
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"
CHECKPOINT = re.compile(r"\.checkpoint(\.\d+)?$")
KEEP_RULES = ("within", "secondly", "minutely", "hourly", "daily", "weekly", "monthly", "yearly")


INTERVAL_HOURS = {"h": 1, "H": 1, "d": 24, "w": 24 * 7, "m": 24 * 31, "y": 24 * 365}  # as borg's intervals


def parse_interval(spec: str) -> timedelta:
    """`checks.frequency`, `prune.keep.within`: `12H`, `30d`, `2w`, `1m` (31 days), `1y` (365 days).

    >>> parse_interval("2w").days
    14
    """
    match = re.fullmatch(r"([1-9][0-9]*)([hHdwmy])", spec)
    if not match:
        raise ValueError(f"not a duration like 12h, 30d, 2w, 1m or 1y: {spec!r}")
    return timedelta(hours=int(match[1]) * INTERVAL_HOURS[match[2]])


def _list(value) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _args(value) -> tuple[str, ...]:
    """NixOS gives `extra*Args` as one shell-quoted string; we also take a list."""
    if value is None:
        return ()
    return tuple(shlex.split(value)) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class Job:
    """One backup job, NixOS option names mapped to Python names with defaults applied."""

    name: str
    repo: str
    paths: tuple[str, ...] = ()
    mode: str = "none"
    pass_command: str | None = None
    compression: str = "auto,zstd"
    start_at: tuple[str, ...] = ("daily",)
    archive_base_name: str | None = None
    do_init: bool = True
    keep: Mapping[str, int | str] = field(default_factory=dict)
    prune_prefix: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    fail_on_warnings: bool = True
    exclude: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    extra_create_args: tuple[str, ...] = ()
    extra_prune_args: tuple[str, ...] = ()
    extra_init_args: tuple[str, ...] = ()
    extra_compact_args: tuple[str, ...] = ()
    check_frequency: str | None = None
    verify_data: bool = False
    drill_files: int = 32  # restore drill (deploys/verify.py): sample size; 0 = no drill
    drill_max_bytes: int = 64 << 20

    @classmethod
    def from_data(cls, name: str, data: Mapping) -> "Job":
        encryption = data.get("encryption") or {}
        checks = data.get("checks") or {}
        prune = data.get("prune") or {}
        return cls(
            name=name,
            repo=data["repo"],
            paths=_list(data.get("paths")),
            mode=encryption["mode"],
            pass_command=encryption.get("passCommand"),
            compression=data.get("compression") or "auto,zstd",
            start_at=("daily",) if data.get("startAt") is None else _list(data.get("startAt")),
            archive_base_name=data.get("archiveBaseName"),
            do_init=data.get("doInit", True) is not False,
            keep={k: v for k, v in (prune.get("keep") or {}).items() if v is not None},
            prune_prefix=prune.get("prefix"),
            environment=dict(data.get("environment") or {}),
            fail_on_warnings=data.get("failOnWarnings", True) is not False,
            exclude=_list(data.get("exclude")),
            patterns=_list(data.get("patterns")),
            extra_args=_args(data.get("extraArgs")),
            extra_create_args=_args(data.get("extraCreateArgs")),
            extra_prune_args=_args(data.get("extraPruneArgs")),
            extra_init_args=_args(data.get("extraInitArgs")),
            extra_compact_args=_args(data.get("extraCompactArgs")),
            check_frequency=checks.get("frequency"),
            verify_data=bool(checks.get("verifyData")),
            drill_files=32 if checks.get("drillFiles") is None else checks["drillFiles"],
            drill_max_bytes=64 << 20 if checks.get("drillMaxBytes") is None else checks["drillMaxBytes"],
        )

    def base_name(self, hostname: str) -> str:
        """`archiveBaseName`, by default `<hostname>-<job>` as in NixOS."""
        return self.archive_base_name or f"{hostname}-{self.name}"

    def custom_prune_prefix(self, base_name: str) -> str | None:
        """`prune.prefix` when it is not NixOS' default (the base name): prune then takes every
        archive starting with it, as NixOS does; by default only this job's own archives."""
        prefix = self.prune_prefix
        return None if prefix in (None, base_name, base_name + "-") else prefix


@dataclass(frozen=True)
class Location:
    """Where and how borg reaches a job's repo from the machine that runs borg."""

    url: str
    rsh: str | None = None
    identity: str | None = None  # the ssh key `rsh` uses, when it is a dedicated one (the operator's)


def probe_argv(where: Location, log: str) -> list[str]:
    """ssh to a Location's server user with its rsh, as borg would connect, ssh's messages to `log`: the
    server's forced command (`borg serve`) starts and ends at once on an empty stdin. Exit 0: reached.

    >>> probe_argv(Location("ssh://borg@10.0.0.5:2222/srv/r", "ssh -i /k"), "/tmp/l")
    ['ssh', '-i', '/k', '-E', '/tmp/l', '-p', '2222', 'borg@10.0.0.5', 'true']
    """
    rest = where.url.removeprefix("ssh://")
    login = rest.split("/", 1)[0]
    address, _, port = login.rpartition(":") if login.rpartition(":")[2].isdigit() else (login, "", "")
    return [*shlex.split(where.rsh or "ssh"), "-E", log, *(["-p", port] if port else []), address, "true"]


SERVER_ALIVE_INTERVAL = 30  # `borgbackup.serverAliveInterval`: seconds; ssh gives up after 3 unanswered


def ssh_rsh(identity: str, known_hosts: str, port: int | None = None, pinned_only: bool = False,
            alive: int = SERVER_ALIVE_INTERVAL) -> str:
    """BORG_RSH for a dedicated key with a pinned host key: no agent, no prompt, no TOFU. `pinned_only`:
    `known_hosts` is the only file trusted (ssh also reads /etc/ssh/ssh_known_hosts otherwise). `alive`:
    ssh's keepalive interval; a connection silent for 3 of them (a network cut) ends borg with an error
    instead of leaving it waiting on TCP."""
    words = [
        "ssh", "-i", identity, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=10", "-o", f"ServerAliveInterval={alive}",
    ]
    if pinned_only:
        words += ["-o", "GlobalKnownHostsFile=/dev/null"]
    if port:
        words += ["-p", str(port)]
    return " ".join(words)


def borg_env(job: Job, location: Location, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every borg command of a job. The passphrase travels only via
    BORG_PASSCOMMAND (run on the host) or BORG_PASSPHRASE_FD (given by the caller in `extra`)."""
    env = {"TZ": "UTC"}
    if job.mode == "none":
        env["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] = "yes"
    elif job.pass_command and not (extra and "BORG_PASSPHRASE_FD" in extra):
        env["BORG_PASSCOMMAND"] = job.pass_command
    if location.rsh:
        env["BORG_RSH"] = location.rsh
    env.update(job.environment)
    env.update(extra or {})
    return env


OPERATOR_BASE_DIR_VAR = "PYINFRA_BACKUP_BORG_BASE_DIR"  # the operator's borg keeps its cache and security dirs here


def operator_env(inherited: Mapping[str, str], borg: Mapping[str, str]) -> dict[str, str]:
    """The environment of borg run on the operator's machine: the operator's own (PATH, HOME, LANG,
    SSH_AUTH_SOCK, ...) without any `BORG_*` of the shell, then `borg` (the job's `borg_env`). A shell's
    BORG_PASSPHRASE or BORG_PASSCOMMAND wins over BORG_PASSPHRASE_FD (borg 1.2.4), and its BORG_REPO, BORG_RSH,
    BORG_KEY_FILE or BORG_BASE_DIR would send borg elsewhere. BORG_BASE_DIR comes from
    `$PYINFRA_BACKUP_BORG_BASE_DIR` when that is set (borg's default, `$HOME`, otherwise).

    >>> operator_env({"PATH": "/bin", "BORG_PASSPHRASE": "x"}, {"BORG_PASSPHRASE_FD": "5"})
    {'PATH': '/bin', 'BORG_PASSPHRASE_FD': '5'}
    """
    env = {key: value for key, value in inherited.items() if not key.startswith("BORG_")}
    if inherited.get(OPERATOR_BASE_DIR_VAR):
        env["BORG_BASE_DIR"] = inherited[OPERATOR_BASE_DIR_VAR]
    return {**env, **borg}


def _borg(job: Job, command: str, lock_wait: int | None = None) -> list[str]:
    """`borg [extraArgs] COMMAND [--lock-wait N]`: NixOS' `extraArgs` go to every borg call."""
    return ["borg", *job.extra_args, command, *(["--lock-wait", str(lock_wait)] if lock_wait is not None else [])]


def init_argv(job: Job, location: Location) -> list[str]:
    return [*_borg(job, "init"), "--encryption", job.mode, "--make-parent-dirs", *job.extra_init_args, location.url]


def list_argv(job: Job, location: Location) -> list[str]:
    """Every archive of the repo, checkpoints too (prune must see them), as JSON."""
    return [*_borg(job, "list"), "--json", "--consider-checkpoints", location.url]


def create_argv(job: Job, base_name: str, url: str = "REPO", lock_wait: int | None = None) -> list[str]:
    """`borg create` for the job; the archive is `<base>-<UTC timestamp>` (borg's {utcnow})."""
    argv = [*_borg(job, "create", lock_wait), "--compression", job.compression]
    for pattern in job.exclude:
        argv += ["--exclude", pattern]
    for pattern in job.patterns:
        argv += ["--pattern", pattern]
    argv += [*job.extra_create_args, "--json"]
    argv.append(f"{url}::{base_name}-{{utcnow:{TIMESTAMP_FORMAT}}}")
    return [*argv, *job.paths]


def keep_argv(keep: Mapping[str, int | str]) -> list[str]:
    return [f"--keep-{rule}={keep[rule]}" for rule in KEEP_RULES if rule in keep]


def archive_glob(base_name: str) -> str:
    """Matches this job's archives and checkpoints, not `<base>-state-*` nor another job's."""
    return f"{base_name}-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*"


def prune_argv(job: Job, base_name: str, url: str, lock_wait: int | None = None) -> list[str]:
    prefix = job.custom_prune_prefix(base_name)
    return [
        *_borg(job, "prune", lock_wait), "--glob-archives", f"{prefix}*" if prefix else archive_glob(base_name),
        *keep_argv(job.keep), *job.extra_prune_args, url,
    ]


def compact_argv(job: Job, url: str, lock_wait: int | None = None) -> list[str]:
    return [*_borg(job, "compact", lock_wait), *job.extra_compact_args, url]


def check_argv(job: Job, url: str, lock_wait: int | None = None) -> list[str]:
    return [*_borg(job, "check", lock_wait), *(["--verify-data"] if job.verify_data else []), url]


def archive_paths(paths: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Paths inside an archive, as a restore names them: a list, or one string of comma-separated
    paths (pyinfra's command line gives `paths=/etc/motd,/etc/hosts` as one string); borg stores them
    without the leading `/`, so `/etc/motd` and `etc/motd` are the same path.

    >>> archive_paths("/etc/motd, etc/hosts")
    ('etc/motd', 'etc/hosts')
    """
    if paths is None:
        return ()
    items = paths.split(",") if isinstance(paths, str) else paths
    return tuple(dict.fromkeys(str(p).strip().lstrip("/") for p in items if str(p).strip().lstrip("/")))


def extract_argv(job: Job, url: str, archive: str, paths: tuple[str, ...] = (), options: tuple[str, ...] = ()) -> list[str]:
    """Run inside the target directory: borg extracts relative to the working directory.
    `options`: e.g. ("--stdout",) or ("--strip-components", "3")."""
    return [*_borg(job, "extract"), "--numeric-ids", *options, f"{url}::{archive}", *paths]


def items_argv(job: Job, url: str, archive: str) -> list[str]:
    """Every item of an archive as JSON lines, with its sha256 (borg computes it from the chunks)."""
    return [*_borg(job, "list"), "--json-lines", "--format", "{sha256}", f"{url}::{archive}"]


def export_tar_argv(job: Job, url: str, archive: str, paths: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[str]:
    """`borg export-tar` of an archive (or some of its paths, less `exclude` patterns) to stdout: a
    restore relayed by the operator's machine (pyinfra_backup/relay.py)."""
    return [*_borg(job, "export-tar"), *(word for pattern in exclude for word in ("--exclude", pattern)),
            f"{url}::{archive}", "-", *paths]


@dataclass(frozen=True)
class Archive:
    name: str
    time: datetime
    id: str = ""

    @property
    def is_checkpoint(self) -> bool:
        return bool(CHECKPOINT.search(self.name))


@dataclass(frozen=True)
class RepoListing(JsonFact):
    """What `borg list --json` says of a repo, or why it could not be read."""

    exists: bool
    archives: tuple[Archive, ...] = ()
    repo_id: str | None = None
    encryption: str | None = None
    error: str | None = None

    def prune_candidates(self, job: Job, base_name: str) -> list[Archive]:
        """The archives `prune_argv` hands to borg prune, checkpoints included."""
        prefix = job.custom_prune_prefix(base_name)
        if prefix is None:
            return self.job_archives(base_name, checkpoints=True)
        return sorted((a for a in self.archives if a.name.startswith(prefix)), key=lambda a: a.time)

    def job_archives(self, base_name: str, checkpoints: bool = False) -> list[Archive]:
        """This job's archives (`<base>-<timestamp>`), oldest first."""
        own = re.compile(re.escape(base_name) + "-" + STAMP + r"(\.checkpoint(\.\d+)?)?$")
        found = [a for a in self.archives if own.match(a.name) and (checkpoints or not a.is_checkpoint)]
        return sorted(found, key=lambda a: a.time)

    def state_archives(self, base_name: str) -> list[Archive]:
        """The job's state archives (`<base>-state-<timestamp>`), oldest first, no checkpoints."""
        own = re.compile(re.escape(base_name) + "-state-" + STAMP + "$")
        return sorted((a for a in self.archives if own.match(a.name)), key=lambda a: a.time)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


MISSING_REPO = re.compile(r"Repository .* does not exist|is not a valid repository", re.I)


def parse_list(stdout: str, rc: int, error: str) -> RepoListing:
    """Parse `borg list --json` run with TZ=UTC; a missing repo is not an error."""
    if rc == 0:
        data = json.loads(stdout)
        archives = tuple(
            Archive(a["name"], _utc(a.get("start") or a["time"]), a.get("id", ""))
            for a in data.get("archives", [])
        )
        return RepoListing(
            exists=True,
            archives=archives,
            repo_id=data.get("repository", {}).get("id"),
            encryption=data.get("encryption", {}).get("mode"),
        )
    if MISSING_REPO.search(error):
        return RepoListing(exists=False)
    return RepoListing(exists=False, error=explain_error(error))


_EXPLANATIONS = (
    (re.compile(r"passphrase supplied in .* is incorrect|passphrase .*incorrect", re.I),
     "wrong passphrase (the passCommand's output does not unlock the repo key)"),
    (re.compile(r"Failed to create/acquire the lock .*\(timeout\)", re.I),
     "the repo is locked by a live borg process; waited --lock-wait seconds and left the lock alone"),
    (re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED", re.I),
     "the server's SSH host key does not match the pinned one: refusing to connect"),
    (re.compile(r"Connection closed by remote host|Connection refused|timed out|No route to host"
                r"|Could not resolve|Network is unreachable", re.I),
     "the repo server is unreachable"),
    (re.compile(r"Broken pipe|Connection reset by peer", re.I),
     "the connection to the repo server was lost (borg serve or ssh ended on the server)"),
    (re.compile(r"Permission denied \(publickey", re.I),
     "the server refused this host's backup key"),
    (re.compile(r"BORG_PASSCOMMAND|passcommand", re.I), "the passCommand failed"),
    (re.compile(r"No space left on device|Insufficient free space", re.I), "the repo server's filesystem is full"),
    (re.compile(r"storage quota .* exceeded", re.I), "the repo's storage quota is exceeded"),
)


def explain_error(stderr_line: str) -> str:
    """A clear reason for a borg failure, keeping borg's own words after it."""
    for pattern, reason in _EXPLANATIONS:
        if pattern.search(stderr_line):
            return f"{reason} ({stderr_line})"
    return stderr_line


def explain_errors(lines: list[str]) -> str:
    """The first of borg's error lines that has a clear reason, else the last one.

    >>> explain_errors(["borg.remote.ConnectionClosed: Connection closed by remote host", "BrokenPipeError: x"])
    'the repo server is unreachable (borg.remote.ConnectionClosed: Connection closed by remote host)'
    """
    for line in lines:
        explained = explain_error(line)
        if explained != line:
            return explained
    return lines[-1] if lines else ""


def parse_create(stdout: str) -> dict:
    """The archive name and sizes from `borg create --json`."""
    data = json.loads(stdout)
    archive = data["archive"]
    stats = archive.get("stats", {})
    return {
        "name": archive["name"],
        "duration": archive.get("duration"),
        "original_size": stats.get("original_size"),
        "compressed_size": stats.get("compressed_size"),
        "deduplicated_size": stats.get("deduplicated_size"),
        "nfiles": stats.get("nfiles"),
    }
