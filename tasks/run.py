"""This run's hold on its hosts: the per-host run lock (pyinfra_backup/run_lock.py), taken by the run's
first read of a backup client (`facts.borg.client_state`), and what a host held by another run gets.

    pyinfra -y INVENTORY deploys/backup.py    # a second run at once waits, then skips a host still held

A host that another run holds (after `borgbackup.lockWait` seconds) is skipped, not failed: its one
operation says who holds it (`skipped`), and pyinfra exits 0 when nothing else failed.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import operation

from facts.borg import client_at_start


def held_elsewhere(target=None) -> str | None:
    """Why this run must leave the host alone (another run holds it), or None; says once how long the run
    waited for the lock. A host whose read failed is left to the operations that read it again."""
    target = host if target is None else target
    if getattr(target, "_pyinfra_backup_lock_said", None) is None:
        try:
            lock = client_at_start(target).lock
        except Exception:  # noqa: BLE001 (the operation that reads it again fails this host alone)
            return None
        said = "" if lock is None or lock.ours else lock.describe()
        if lock is not None and lock.ours and lock.waited:
            target.log_styled(f"waited {lock.waited}s for the run lock (another run held this host)", fg="yellow",
                              log_func=logger.warning)
        target._pyinfra_backup_lock_said = said
    return target._pyinfra_backup_lock_said or None


@operation()
def skipped(reason: str):
    """Leave a host alone, saying why (another run holds it): a no-op, never a failure.

    + reason: what the operator reads (`another run holds this host since <time> (<controller>, pid N)`)

    **Example:**

    .. code:: python

        if run.held_elsewhere(host):
            run.skipped(name="Run lock", reason=run.held_elsewhere(host))
    """
    message = f"skipped: {reason}; the next run backs it up"
    host.log_styled(message, fg="yellow", log_func=logger.warning)  # a noop alone is shown with -v only
    host.noop(message)
    return
    yield  # an operation is a generator
