"""What the testinfra checks of tests/infra decide, kept apart from pytest and testinfra.

- `select_hosts`: `--limit` as pyinfra reads it (a group name, or a glob on host names).
- `ssh_connection`: a pyinfra host's SSH connector data as a testinfra/paramiko connection.
- `check_overdue`: whether a job's last successful `borg check` is later than `checks.frequency` allows.

>>> ssh_connection("web-1", {"ssh_hostname": "10.0.0.5", "ssh_port": 2222}).port
2222
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from pyinfra_backup.borg import parse_interval
from pyinfra_backup.schedule import Schedule

STRICT_VALUES = ("yes", "no", "off", "accept-new", "ask")


def select_hosts(names: list[str], groups: Mapping[str, Iterable[str]], limits: Iterable[str]) -> list[str]:
    """The hosts matched by any of `limits` (comma-separated allowed), in inventory order; all of
    them without a limit. A pattern matching nothing is an error (a check of nothing passes)."""
    patterns = [p.strip() for limit in limits for p in limit.split(",") if p.strip()]
    if not patterns:
        return list(names)
    chosen: set[str] = set()
    for pattern in patterns:
        matched = set(groups[pattern]) if pattern in groups else set(fnmatch.filter(names, pattern))
        if not matched:
            raise ValueError(f"--limit {pattern}: no host or group of the inventory matches")
        chosen |= matched
    return [name for name in names if name in chosen]


@dataclass(frozen=True)
class SshConnection:
    hostname: str
    port: int
    user: str | None
    key: str | None
    password: str | None
    known_hosts: str
    strict: str  # pyinfra's ssh_strict_host_key_checking: yes | no/off | accept-new | ask
    ssh_config: str | None
    allow_agent: bool
    look_for_keys: bool

    @property
    def hostspec(self) -> str:
        """testinfra's `[user@]host:port` (the password goes to paramiko directly, never in a spec)."""
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{user}{host}:{self.port}"


def ssh_connection(name: str, data: Mapping) -> SshConnection:
    """pyinfra's ssh connector data (ssh_hostname, ssh_port, ssh_user, ssh_key, ssh_password,
    ssh_known_hosts_file, ssh_strict_host_key_checking, ssh_config_file, ssh_allow_agent,
    ssh_look_for_keys) with pyinfra's defaults; the inventory name is the address when there is
    no ssh_hostname."""
    strict = str(data.get("ssh_strict_host_key_checking") or "accept-new")
    if strict not in STRICT_VALUES:
        raise ValueError(f"{name}: ssh_strict_host_key_checking: expected one of {', '.join(STRICT_VALUES)}, got {strict!r}")

    def path(key: str, default: str | None = None) -> str | None:
        value = data.get(key) or default
        return os.path.expanduser(value) if value else None

    return SshConnection(
        hostname=str(data.get("ssh_hostname") or name), port=int(data.get("ssh_port") or 22),
        user=data.get("ssh_user"), key=path("ssh_key"), password=data.get("ssh_password"),
        known_hosts=path("ssh_known_hosts_file", "~/.ssh/known_hosts"), strict=strict,
        ssh_config=path("ssh_config_file"), allow_agent=data.get("ssh_allow_agent", True) is not False,
        look_for_keys=data.get("ssh_look_for_keys", True) is not False,
    )


def check_overdue(last_ok: datetime | None, frequency: str, start_at: Iterable[str], now: datetime) -> str | None:
    """Why the last successful check is too old, or None. A check runs with a backup run once
    `frequency` has passed; like freshness, one missed run (one calendar event of `startAt`) is
    tolerated, so it is overdue once the event after the first run that should have checked has passed."""
    if last_ok is None:
        return "no successful borg check recorded on the host"
    due = last_ok + parse_interval(frequency)
    schedule = Schedule.parse(list(start_at))
    first_run = schedule.next(due - timedelta(microseconds=1)) or due
    deadline = schedule.next(first_run) or first_run
    if now < deadline:
        return None
    age = now - last_ok
    return (f"last successful borg check {age.days}d{age.seconds // 3600:02d}h ago (at {last_ok:%Y-%m-%dT%H:%M:%SZ}), "
            f"checks.frequency {frequency}: overdue since {deadline:%Y-%m-%dT%H:%M:%SZ}")
