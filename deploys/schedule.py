"""The scheduled fleet run: a systemd service + timer on the operator's machine, running
`deploys/backup.py` on the fleet's inventory every N minutes (run it on `@local`).

    pyinfra -y @local deploys/schedule.py --data schedule_inventory=/etc/pyinfra-backup/fleet.py
    pyinfra -y @local deploys/schedule.py --data schedule_inventory=... --data schedule_interval=30 \\
        --data schedule_user=pyinfra-backup --data schedule_project=/opt/pyinfra-backup
    pyinfra -y @local deploys/schedule.py --data schedule_present=false      # remove the timer and the service

Settings (host data, e.g. `--data`): `schedule_inventory` (required to install), `schedule_interval` (minutes,
default 15), `schedule_randomized_delay` (seconds, default a third of the interval), `schedule_user` (default
`pyinfra-backup`, made when absent), `schedule_home`, `schedule_project` / `schedule_venv` (default: this
checkout and its `.venv`), `schedule_name` (units `<name>.service` / `.timer`), `schedule_args` (more pyinfra
arguments), `schedule_present`. A second run changes nothing.
"""

from pyinfra import host

from pyinfra_backup.scheduler import SchedulerError, SchedulerSettings
from pyinfra_backup.validate import require_valid_inventory
from tasks import schedule

require_valid_inventory()

try:
    settings = SchedulerSettings.from_data(host.data.dict())
except SchedulerError as error:
    raise SystemExit(f"{host.name}: {error}") from None

schedule.install(
    name=("Install" if settings.present else "Remove") + f" {settings.timer_name} (fleet backup run)",
    inventory=settings.inventory, interval=settings.interval, randomized_delay=settings.randomized_delay,
    user=settings.user, home=settings.home, project=settings.project, venv=settings.venv, unit=settings.name,
    args=list(settings.args), present=settings.present,
)
