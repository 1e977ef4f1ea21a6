"""The scheduled fleet run on the operator's machine: a systemd service + timer (pure: no I/O).

    settings = SchedulerSettings.build(inventory="/etc/pyinfra-backup/fleet.py", interval=15)
    service_unit(settings)   # pyinfra-backup.service: runs deploys/backup.py on the inventory, once
    timer_unit(settings)     # pyinfra-backup.timer: every 15 minutes, RandomizedDelaySec, Persistent=true

The service runs `<venv>/bin/pyinfra -y <inventory> <project>/deploys/backup.py` as `User=` (default the
dedicated `pyinfra-backup`, whose home holds the operator's state: archive ledger, validation cache, borg's
security and cache directories, its SSH key); its output goes to the journal and it fails (non-zero exit)
when any host failed, as pyinfra exits. systemd never starts the service while it is still running, so a run
longer than the interval delays the next one instead of overlapping it.

`tasks.schedule.install` (run by `deploys/schedule.py`) writes both files and enables the timer;
`present=False` removes them. The intervals a timer can keep exactly with `OnCalendar=` (which
`Persistent=true` needs) are the divisors of an hour or of a day: see `on_calendar`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pyinfra_backup.jsonable import JsonFact
from pyinfra_backup.shell import atomic_write, sh_join

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_NAME = "pyinfra-backup"
DEFAULT_USER = "pyinfra-backup"
DEFAULT_HOME = "/var/lib/pyinfra-backup-operator"  # not /var/lib/pyinfra-backup: a host's own records live there
DEFAULT_INTERVAL = 15  # minutes
UNIT_DIR = "/etc/systemd/system"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"  # what systemd gives a service
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_USER = re.compile(r"[a-z_][a-z0-9_-]*\$?$")
_PLAIN = re.compile(r"[A-Za-z0-9_./@+,:=-]+$")


class SchedulerError(ValueError):
    """Bad settings: the message names the key, what was expected and what was given."""


def on_calendar(interval: int) -> str:
    """The `OnCalendar=` spec firing every `interval` minutes, aligned to the hour or the day.

    >>> on_calendar(15), on_calendar(60), on_calendar(360), on_calendar(1440)
    ('*-*-* *:00/15:00', '*-*-* *:00:00', '*-*-* 00/6:00:00', '*-*-* 00:00:00')
    """
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise SchedulerError(f"schedule_interval: expected a whole number of minutes >= 1, got {interval!r}")
    if interval < 60 and 60 % interval == 0:
        return f"*-*-* *:00/{interval}:00"
    if interval % 60 == 0 and 1440 % interval == 0:
        hours = interval // 60
        if hours == 24:  # systemd refuses the step 00/24
            return "*-*-* 00:00:00"
        return "*-*-* *:00:00" if hours == 1 else f"*-*-* 00/{hours}:00:00"
    raise SchedulerError(
        f"schedule_interval: expected minutes that divide an hour or a day (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, "
        f"60, 120, 180, 240, 360, 480, 720, 1440), got {interval!r}: a timer keeps other intervals only without "
        "Persistent=true")


def systemd_word(word: str, executable: bool = False) -> str:
    """One word of `ExecStart=` as systemd.service(5) parses it back: `%` doubled (specifiers), `$` doubled
    in arguments (variables; the executable's path is not expanded: `systemd-analyze verify` finds
    `$$` literally there), quoted when it holds anything but plain path characters."""
    if "\n" in word or "\0" in word:
        raise SchedulerError(f"a newline or NUL cannot be in a command line of a unit: {word!r}")
    escaped = word.replace("%", "%%")
    if not executable:
        escaped = escaped.replace("$", "$$")
    if _PLAIN.match(escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class SchedulerSettings:
    inventory: str
    interval: int = DEFAULT_INTERVAL
    randomized_delay: int = 300
    user: str = DEFAULT_USER
    home: str = DEFAULT_HOME
    project: str = str(PROJECT)
    venv: str = str(PROJECT / ".venv")
    name: str = DEFAULT_NAME
    args: tuple[str, ...] = ()
    present: bool = True

    @classmethod
    def build(cls, inventory=None, interval=DEFAULT_INTERVAL, randomized_delay=None, user=DEFAULT_USER,
              home=DEFAULT_HOME, project=None, venv=None, name=DEFAULT_NAME, args=None, present=True):
        """Settings checked one by one (SchedulerError naming the `schedule_*` key); `None` means the default:
        project = this checkout, venv = `<project>/.venv`, randomized_delay = a third of the interval."""
        on_calendar(interval)
        for key, value in (("schedule_inventory", inventory), ("schedule_home", home)):
            if not isinstance(value, str) or not value.startswith("/"):
                raise SchedulerError(f"{key}: expected an absolute path on the operator's machine, got {value!r}")
        project = project or str(PROJECT)
        venv = venv or f"{project.rstrip('/')}/.venv"
        for key, value in (("schedule_project", project), ("schedule_venv", venv)):
            if not isinstance(value, str) or not value.startswith("/"):
                raise SchedulerError(f"{key}: expected an absolute path, got {value!r}")
        if randomized_delay is None:
            randomized_delay = interval * 60 // 3
        if isinstance(randomized_delay, bool) or not isinstance(randomized_delay, int) \
                or not 0 <= randomized_delay < interval * 60:
            raise SchedulerError(f"schedule_randomized_delay: expected whole seconds from 0 to less than the interval "
                                 f"({interval * 60} s), got {randomized_delay!r}")
        if not isinstance(user, str) or not _USER.match(user):
            raise SchedulerError(f"schedule_user: expected a user name (e.g. {DEFAULT_USER}), got {user!r}")
        if not isinstance(name, str) or not _NAME.match(name):
            raise SchedulerError(f"schedule_name: expected a unit name without suffix (letters, digits, _.-), got {name!r}")
        if isinstance(args, str):
            args = shlex.split(args)
        if not isinstance(args or (), (list, tuple)) or not all(isinstance(a, str) for a in args or ()):
            raise SchedulerError(f"schedule_args: expected pyinfra arguments (a string or a list), got {args!r}")
        if present not in (True, False, "true", "false"):
            raise SchedulerError(f"schedule_present: expected true or false, got {present!r}")
        return cls(inventory, interval, randomized_delay, user, home, project.rstrip("/"), venv.rstrip("/"), name,
                   tuple(args or ()), present in (True, "true"))

    @classmethod
    def from_data(cls, data: Mapping) -> SchedulerSettings:
        """From host data (`--data schedule_inventory=... --data schedule_interval=30 ...`)."""
        keys = ("inventory", "interval", "randomized_delay", "user", "home", "project", "venv", "name", "args",
                "present")
        given = {key: data.get(f"schedule_{key}") for key in keys}
        if given["inventory"] is None and given["present"] in (None, True, "true"):
            raise SchedulerError("schedule_inventory: required: the path of the fleet's inventory on this machine "
                                 "(--data schedule_inventory=/etc/pyinfra-backup/fleet.py)")
        if given["inventory"] is None:
            given["inventory"] = "/"  # removal needs no inventory
        return cls.build(**{k: v for k, v in given.items() if v is not None})

    @property
    def pyinfra(self) -> str:
        return f"{self.venv}/bin/pyinfra"

    @property
    def service_name(self) -> str:
        return f"{self.name}.service"

    @property
    def timer_name(self) -> str:
        return f"{self.name}.timer"

    def exec_start(self) -> list[str]:
        """The service's command line (argv)."""
        return [self.pyinfra, "-y", *self.args, self.inventory, f"{self.project}/deploys/backup.py"]


HEADER = "# Written by pyinfra-backup (deploys/schedule.py): change its settings and run it again, not this file.\n"


def service_unit(settings: SchedulerSettings) -> str:
    """The `.service` file: one fleet backup run, as `User=`, output to the journal."""
    return HEADER + "\n".join([
        "[Unit]",
        f"Description=pyinfra-backup: fleet backup run of {settings.inventory.replace('%', '%%')}",
        "Documentation=file://" + quote(f"{settings.project}/README.md").replace("%", "%%"),  # a URL, then specifiers
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        f"User={settings.user}",
        "WorkingDirectory=~",
        "Environment=PYTHONUNBUFFERED=1",
        "ExecStart=" + " ".join(systemd_word(word, executable=i == 0) for i, word in enumerate(settings.exec_start())),
        "StandardOutput=journal",
        "StandardError=journal",
        f"SyslogIdentifier={settings.name}",
        "Nice=10",
        "",
    ])


def timer_unit(settings: SchedulerSettings) -> str:
    """The `.timer` file: every `interval` minutes, spread by `RandomizedDelaySec`, runs missed while the
    machine was off made up at boot (`Persistent=true`)."""
    return HEADER + "\n".join([
        "[Unit]",
        f"Description=pyinfra-backup: fleet backup run every {settings.interval} min",
        "",
        "[Timer]",
        f"OnCalendar={on_calendar(settings.interval)}",
        f"RandomizedDelaySec={settings.randomized_delay}",
        "FixedRandomDelay=true",
        "Persistent=true",
        f"Unit={settings.service_name}",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ])


@dataclass(frozen=True)
class InstalledScheduler(JsonFact):
    """What `facts.scheduler.SchedulerUnits` read on the operator's machine."""

    service: str | None = None  # file contents, None when absent
    timer: str | None = None
    enabled: bool = False  # timers.target.wants/<timer> links to the timer file
    user_exists: bool = False
    systemd_running: bool = False  # systemd is PID 1: the timer can be (re)started now
    pyinfra_ok: bool = False  # <venv>/bin/pyinfra is executable
    inventory_ok: bool = False  # the inventory is a readable file (as root)
    user_reads: bool | None = None  # the user reads the inventory and runs pyinfra (None: no such user yet)


def wants_link(settings: SchedulerSettings, unit_dir: str = UNIT_DIR) -> str:
    return f"{unit_dir}/timers.target.wants/{settings.timer_name}"


def install_problems(settings: SchedulerSettings, current: InstalledScheduler) -> list[str]:
    """Why installing would not give a working service (nothing is changed when there is one)."""
    problems = []
    if not current.pyinfra_ok:
        problems.append(f"schedule_venv: {settings.pyinfra} is not an executable: run scripts/install.sh in "
                        f"{settings.project}, or give schedule_venv/schedule_project")
    if not current.inventory_ok:
        problems.append(f"schedule_inventory: {settings.inventory} is not a readable file on this machine")
    if current.user_exists and current.user_reads is False:
        problems.append(f"schedule_user: {settings.user} cannot read {settings.inventory} or run {settings.pyinfra}: "
                        f"give it read access (e.g. chgrp {settings.user} + chmod g+r on the inventory, and every "
                        "directory above readable and searchable)")
    return problems


def install_commands(settings: SchedulerSettings, current: InstalledScheduler, unit_dir: str = UNIT_DIR) -> list[str]:
    """Commands bringing the machine to `settings` (empty: nothing to change). The user is made when absent
    (a system user with its own group and home); unit files are replaced atomically; the timer is enabled as
    `systemctl enable` does (a link in timers.target.wants); when systemd runs, it reloads and (re)starts
    the timer."""
    commands = []
    if not current.user_exists:
        commands.append(sh_join(["useradd", "--system", "--user-group", "--create-home", "--home-dir", settings.home,
                                 "--shell", "/usr/sbin/nologin", "--comment", "pyinfra-backup scheduled runs",
                                 settings.user]))
        commands.append(_user_check(settings))
    changed = False
    for filename, text, now in ((settings.service_name, service_unit(settings), current.service),
                                (settings.timer_name, timer_unit(settings), current.timer)):
        if now != text:
            commands.append(atomic_write(f"{unit_dir}/{filename}", text, mode="0644"))
            changed = True
    if not current.enabled:
        link = wants_link(settings, unit_dir)
        commands.append(f"mkdir -p {shlex.quote(link.rsplit('/', 1)[0])} && "
                        f"ln -sfn {shlex.quote(f'{unit_dir}/{settings.timer_name}')} {shlex.quote(link)}")
    if current.systemd_running and (changed or not current.enabled):
        commands.append(sh_join(["systemctl", "daemon-reload"]) + " && "
                        + sh_join(["systemctl", "restart", settings.timer_name]))
    return commands


def _user_check(settings: SchedulerSettings) -> str:
    """Fails (before any unit file is written) when the new user cannot read the inventory or run pyinfra."""
    message = (f"schedule_user: {settings.user} cannot read {settings.inventory} or run {settings.pyinfra}: give it "
               "read access, then run the deploy again")
    return (f"runuser -u {shlex.quote(settings.user)} -- sh -c {shlex.quote(reads_check(settings))} "
            f"|| {{ echo {shlex.quote(message)} >&2; exit 1; }}")


def reads_check(settings: SchedulerSettings) -> str:
    """A command, run as the service's user, that fails unless it can read the inventory and run pyinfra."""
    return f"test -r {shlex.quote(settings.inventory)} && test -x {shlex.quote(settings.pyinfra)}"


def remove_commands(settings: SchedulerSettings, current: InstalledScheduler, unit_dir: str = UNIT_DIR) -> list[str]:
    """Commands removing the timer and the service (the user and its home stay: they hold the operator's
    archive ledger and keys)."""
    if current.service is None and current.timer is None and not current.enabled:
        return []
    commands = []
    if current.systemd_running:
        commands.append(sh_join(["systemctl", "stop", settings.timer_name]) + " || true")
    paths = [wants_link(settings, unit_dir), f"{unit_dir}/{settings.service_name}", f"{unit_dir}/{settings.timer_name}"]
    commands.append(sh_join(["rm", "-f", *paths]))
    if current.systemd_running:
        commands.append(sh_join(["systemctl", "daemon-reload"]))
    return commands


def parse_unit(text: str) -> dict[str, dict[str, str]]:
    """{section: {key: value}} of a unit file (the last assignment of a key wins; enough for ours)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif current is not None and "=" in line:
            key, value = line.split("=", 1)
            current[key.strip()] = value.strip()
    return sections


def parse_exec_start(value: str) -> list[str]:
    """ExecStart= back to argv, for the quoting `systemd_word` writes (quotes, backslashes, %% and $$)."""
    words = [word.replace("%%", "%") for word in shlex.split(value, posix=True)]
    return words[:1] + [word.replace("$$", "$") for word in words[1:]]


