"""The per-host run lock: one run of ours on a host at a time, held as long as the run's connection.

`/var/lib/pyinfra-backup/run.lock` is `flock`ed by a small holder process (`tail --pid`) that the
run's first read of the host starts (`lock_section`, a section of `facts.borg.BorgClient`: no
extra remote command). The holder lives while the sshd session process of the run's connection
lives (the nearest `sshd` ancestor of the read's shell; without one, e.g. `@local`, its parent),
so the lock ends with the run, or with a run killed -9 or a connection cut, within a second of
sshd noticing. The lock file's one line says who holds it: `<unix time> <controller> <pid> <run token>`.

A run that finds the lock held waits up to `borgbackup.lockWait` seconds (`flock -w`), then reports
the holder: that host is skipped (`tasks/run.py`). The same run reading the host again finds its
own token and goes on. Everything here is pure: the script and the parser.

>>> parse_lock(["held 1796692800 ops.example 4242 ops.example:4242:ab12"]).describe()
'another run holds this host since 2026-12-08 01:20:00 UTC (ops.example, pid 4242)'
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from pyinfra_backup.borg import STATE_DIR
from pyinfra_backup.shell import Inline, sh_join

LOCK = f"{STATE_DIR}/run.lock"  # its content: the holder line, `<unix time> <controller> <pid> <run token>`
HOLDER_WIDTH = 160


@dataclass(frozen=True)
class RunId:
    """Who runs: the controller's host name, its process id and a token unique to the run."""

    controller: str
    pid: int
    token: str

    @classmethod
    def of_this_process(cls) -> "RunId":
        controller = socket.gethostname().split()[0] if socket.gethostname().strip() else "controller"
        pid = os.getpid()
        return cls(controller, pid, f"{controller}:{pid}:{secrets.token_hex(4)}")


_THIS_RUN: RunId | None = None


def this_run() -> RunId:
    """This process's run (one pyinfra process is one run)."""
    global _THIS_RUN
    if _THIS_RUN is None:
        _THIS_RUN = RunId.of_this_process()
    return _THIS_RUN


# The nearest sshd ancestor of this shell: the session process of the run's connection (builtins only).
_SESSION = (
    '_s=$PPID; _p=$PPID; while [ "$_p" -gt 1 ]; do read -r _c < /proc/$_p/comm || break; '
    'case $_c in sshd|sshd-session) _s=$_p; break;; esac; '
    'read -r _st < /proc/$_p/stat || break; _st=${_st##*) }; set -- $_st; _p=$2; done'
)


def lock_script(run: RunId, wait: int, now: int, lock_path: str = LOCK) -> str:
    """POSIX sh printing `acquired <seconds waited>`, `ours` (this run holds it already) or `held <holder
    line>` (not free after `wait` seconds). `now`: the controller's unix time, written as the holder's
    start (no `date` process on an uncontended host). The holder line is the lock file's content:
    written under the lock, whole, in one fixed-width write over the last holder's (no rename, no
    process: this runs on every host of every run)."""
    directory = lock_path.rsplit("/", 1)[0]
    lock = sh_join([lock_path])
    line = sh_join([f"{int(now)} {run.controller} {int(run.pid)} {run.token}"[:HOLDER_WIDTH]])
    return "; ".join([
        f"{{ [ -d {sh_join([directory])} ] || mkdir -p {sh_join([directory])}; }} && exec 9<> {lock} || exit 1",
        "_w=0",
        f"if ! flock -n 9; then _h=; read -r _h < {lock}; set -- $_h; "
        f"if [ \"${{4:-}}\" = {sh_join([run.token])} ]; then echo ours; exit 0; fi; "
        f"_t=$(date +%s); flock -w {int(wait)} 9 || {{ _h=; read -r _h < {lock}; echo \"held $_h\"; exit 0; }}; "
        "_w=$(( $(date +%s) - _t )); fi",
        f"printf '%-{HOLDER_WIDTH}s\\n' {line} >&9",  # at offset 0 of the fd just opened
        _SESSION,
        'setsid -f tail -s 1 -f --pid="$_s" /dev/null < /dev/null > /dev/null 2>&1',  # inherits fd 9: the lock
        'echo "acquired $_w"',
    ])


DEFAULT_WAIT = 60  # borgbackup.lockWait's default: borg's own lock wait, and this one's


@dataclass(frozen=True)
class LockRequest:
    """What a read of a host asks: this run's hold, waiting up to `wait` seconds; `now` is the controller's time."""

    run: RunId
    wait: int
    now: int

    @classmethod
    def for_host(cls, host_data: Mapping) -> "LockRequest":
        wait = int((host_data.get("borgbackup") or {}).get("lockWait", DEFAULT_WAIT))
        return cls(this_run(), wait, int(time.time()))

    def section(self) -> Inline:
        return Inline(lock_script(self.run, self.wait, self.now))


@dataclass(frozen=True)
class LockState:
    """This run's hold on a host: `held_by` another run (the host is skipped), else `waited` seconds."""

    held_by: tuple[datetime, str, int] | None = None  # since, controller, pid
    waited: int = 0
    unknown_holder: bool = False  # held, but the lock file names no holder

    @property
    def ours(self) -> bool:
        return self.held_by is None and not self.unknown_holder

    def describe(self) -> str:
        if self.unknown_holder:
            return f"another run holds this host ({LOCK} names no holder)"
        since, controller, pid = self.held_by
        return f"another run holds this host since {since:%Y-%m-%d %H:%M:%S} UTC ({controller}, pid {pid})"


def parse_lock(lines: list[str]) -> LockState:
    """The output of `lock_script`; anything else (flock missing, a read-only disk) raises ValueError."""
    words = " ".join(lines).split()
    if words[:1] == ["ours"]:
        return LockState()
    if words[:1] == ["acquired"] and len(words) == 2 and words[1].lstrip("-").isdigit():
        return LockState(waited=max(0, int(words[1])))
    if words[:1] == ["held"]:
        if len(words) >= 4 and words[1].isdigit() and words[3].isdigit():
            return LockState(held_by=(datetime.fromtimestamp(int(words[1]), timezone.utc), words[2], int(words[3])))
        return LockState(unknown_holder=True)
    raise ValueError(f"unexpected output of the run lock: {' '.join(lines)[:200]!r}")
