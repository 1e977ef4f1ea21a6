"""The scheduled fleet run on the operator's machine: a systemd service + timer (see
`pyinfra_backup/scheduler.py` for the units, `deploys/schedule.py` for the deploy that runs this).

    pyinfra -y @local tasks.schedule.install inventory=/etc/pyinfra-backup/fleet.py interval=30
"""

from __future__ import annotations

from pyinfra import host

from facts.scheduler import SchedulerUnits
from pyinfra_backup.scheduler import (
    DEFAULT_HOME, DEFAULT_INTERVAL, DEFAULT_NAME, DEFAULT_USER, SchedulerError, SchedulerSettings, install_commands,
    install_problems, remove_commands,
)
from tasks.common import HostError, host_operation


@host_operation
def install(inventory: str | None = None, interval: int = DEFAULT_INTERVAL, randomized_delay: int | None = None,
            user: str = DEFAULT_USER, home: str = DEFAULT_HOME, project: str | None = None, venv: str | None = None,
            unit: str = DEFAULT_NAME, args: str | list[str] | None = None, present: bool = True):
    """Install (or with `present=False` remove) the systemd service + timer running the fleet backup.

    + inventory: absolute path of the fleet's inventory on this machine (not needed to remove)
    + interval: minutes between runs, a divisor of an hour or of a day (default 15)
    + randomized_delay: seconds each run is delayed by at most, fixed per machine (default a third of the interval)
    + user: who the service runs as (made as a system user when absent; needs to read the inventory and the SSH
      key that reaches the hosts); its home holds the operator's state (archive ledger, borg's security dirs)
    + home: that user's home when the user is made here
    + project, venv: the checkout whose `deploys/backup.py` runs, and its virtualenv (default: this one)
    + unit: name of the units (`<unit>.service`, `<unit>.timer`)
    + args: more pyinfra arguments, e.g. `--limit clients`
    + present: false removes both units (the user and its home stay: they hold the ledger)

    **Example:** ``pyinfra -y @local deploys/schedule.py --data schedule_inventory=/etc/pyinfra-backup/fleet.py``
    """
    try:
        settings = SchedulerSettings.build(inventory or ("/" if present in (False, "false") else None), interval,
                                           randomized_delay, user, home, project, venv, unit, args, present)
    except SchedulerError as error:
        raise HostError(f"{host.name}: {error}") from None
    current = host.get_fact(SchedulerUnits, inventory=settings.inventory, unit=settings.name, user=settings.user,
                            venv=settings.venv)
    if not settings.present:
        commands = remove_commands(settings, current)
        if not commands:
            host.noop(f"{settings.timer_name} and {settings.service_name} are not installed")
        yield from commands
        return
    if problems := install_problems(settings, current):
        raise HostError(f"{host.name}: nothing changed: " + "; ".join(problems))
    commands = install_commands(settings, current)
    if not commands:
        host.noop(f"{settings.timer_name} runs {settings.inventory} every {settings.interval} min as {settings.user}")
    yield from commands
