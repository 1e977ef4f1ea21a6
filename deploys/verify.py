"""Verify the fleet's backups: borg check when due, a restore drill per job, freshness assertions.

    pyinfra -y INVENTORY deploys/verify.py
    pyinfra -y INVENTORY deploys/verify.py --data backup_force_check=true   # borg check now, every job

Per job: `borg check` when the last successful one is older than `checks.frequency` or the
last one failed (or forced); a restore drill of the newest archive (`checks.drillFiles` files,
compared with the live ones), and of the newest state archive for the job of `system_state`.
Then each job's freshness from its repo. Every step runs even
when an earlier one failed; the host fails at the end, naming each job and what failed. A host
that another run holds (the run lock, tasks/run.py) is skipped after `borgbackup.lockWait` seconds.
"""

from pyinfra import host, inventory

from facts.borg import host_plan
from pyinfra_backup.validate import require_valid_inventory
from tasks import borg, run, state, verify

require_valid_inventory()

plan = host_plan(host, inventory)
held = run.held_elsewhere(host) if plan else None  # the run lock, as deploys/backup.py takes it
if held:
    run.skipped(name="Run lock", reason=held)
for planned in plan if not held else ():
    job = planned.job.name
    borg.check(job=job, name=f"borg check {job}", _ignore_errors=True)
    verify.drill(job=job, name=f"Restore drill {job}", _ignore_errors=True)
    if job == state.state_job(host):
        verify.drill(job=job, state_archive=True, name=f"Restore drill {job}: state archive", _ignore_errors=True)
if plan and not held:
    verify.freshness(name="Freshness of every job", _ignore_errors=True)
    verify.outcome(name="Verify outcome")
