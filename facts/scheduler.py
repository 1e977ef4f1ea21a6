"""The scheduled fleet run installed on the operator's machine, read in ONE command.

    pyinfra @local fact facts.scheduler.SchedulerUnits inventory=/etc/pyinfra-backup/fleet.py
"""

from __future__ import annotations

from pyinfra.api import FactBase

from pyinfra_backup.scheduler import (
    DEFAULT_NAME, DEFAULT_USER, UNIT_DIR, InstalledScheduler, SchedulerSettings, reads_check, wants_link,
)
from pyinfra_backup.shell import ReadFile, parse_sections, sectioned_script, sh_join


class SchedulerUnits(FactBase):
    """The service and timer files (None when absent), whether the timer is enabled, whether the user
    exists and reads the inventory, whether systemd runs and the project's pyinfra is there.
    Example: `host.get_fact(SchedulerUnits, inventory="/etc/pyinfra-backup/fleet.py")` ->
    InstalledScheduler(service="...", timer="...", enabled=True, user_exists=True, ...)."""

    def command(self, inventory: str = "/", unit: str = DEFAULT_NAME, user: str = DEFAULT_USER,
                venv: str | None = None) -> str:
        settings = SchedulerSettings.build(inventory=inventory, name=unit, user=user, venv=venv)
        link, timer = wants_link(settings), f"{UNIT_DIR}/{settings.timer_name}"
        return sectioned_script({
            "service": ReadFile(f"{UNIT_DIR}/{settings.service_name}"),
            "timer": ReadFile(timer),
            "enabled": f"[ \"$(readlink {sh_join([link])})\" = {sh_join([timer])} ]",
            "user": sh_join(["getent", "passwd", user]),
            "systemd": "[ -d /run/systemd/system ]",
            "pyinfra": f"[ -x {sh_join([settings.pyinfra])} ]",
            "inventory": f"[ -f {sh_join([inventory])} ] && [ -r {sh_join([inventory])} ]",
            "reads": f"getent passwd {sh_join([user])} >/dev/null && runuser -u {sh_join([user])} -- sh -c "
                     f"{sh_join([reads_check(settings)])}",
        })

    def process(self, output) -> InstalledScheduler:
        sections = parse_sections(output)

        def text(name: str) -> str | None:
            return sections[name].text + "\n" if sections[name].ok else None

        user_exists = sections["user"].ok
        return InstalledScheduler(
            service=text("service"), timer=text("timer"), enabled=sections["enabled"].ok, user_exists=user_exists,
            systemd_running=sections["systemd"].ok, pyinfra_ok=sections["pyinfra"].ok,
            inventory_ok=sections["inventory"].ok, user_reads=sections["reads"].ok if user_exists else None,
        )
