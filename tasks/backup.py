"""A host's whole backup run as ONE operation (deploys/backup.py calls it after enrollment).

A run with nothing due then costs one operation per host, not one per step and job: pyinfra's
own cost of an operation call is a few milliseconds per host, more than our reading of a host.

    pyinfra -y INVENTORY tasks.backup.run --limit web01
"""

from __future__ import annotations

from pyinfra import host, inventory

from facts.borg import host_plan
from tasks import borg, escrow, state
from tasks import run as run_lock
from tasks.common import contained, host_operation


@host_operation
def run():
    """`pin_server_keys`, then every job in turn (`init`, `create` when due, the key and passphrase
    escrow when `borgbackup.escrow` is set, `prune` + compact, `check`; the state archive after its job, `system_state`), then `outcome`. A failed step skips
    the rest of its job only; the other jobs go on, and `outcome` fails the host naming each
    failed job and why. A host another run holds (the run lock, tasks/run.py) is skipped.

    Example: `run()`, after `borg.backup_key()` and the servers' `borg.repo_server()`.
    """
    held = run_lock.held_elsewhere(host)
    if held:
        yield from run_lock.skipped._inner(reason=held)
        return
    plan = host_plan(host, inventory)
    if any(planned.server for planned in plan):
        yield from borg.pin_server_keys._inner()
    state_job = state.state_job(host)
    for planned in plan:
        job = planned.job.name
        for step in (borg.init, borg.create, escrow.keep, borg.prune, borg.check):
            arguments = {"unless_create_will": True} if step is borg.init else {}
            yield from contained(step._inner(job=job, **arguments), lambda job=job: borg.failed_jobs().add(job))
        if job == state_job:  # the state steps record their own failures for `outcome`
            yield from contained(state.snapshot._inner(), lambda: None)
            if state.age_recipients(host):
                yield from contained(state.encrypted_copy._inner(), lambda: None)
    yield from borg.outcome._inner()
