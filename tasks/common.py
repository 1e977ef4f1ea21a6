"""What every operation of ours shares: failing one host cleanly at execute time.

pyinfra 3 runs an operation's body when the operation executes (`-y`); an
exception raised there stops every host. An operation decorated with
`host_operation` may raise `HostError` instead: that host fails with the
message, the others go on.

    @host_operation
    def create(job: str):
        if broken:
            raise HostError(f"{host.name}: job {job}: cannot read repo: ...")
        yield "borg create ..."
"""

from __future__ import annotations

import functools

from pyinfra import logger
from pyinfra.api import FunctionCommand, operation


class HostError(Exception):
    """This host cannot go on: the message says which host, which key or job, and why."""

    def record(self) -> list[str]:
        """Commands that record the failure on the host before it fails (none by default)."""
        return []


def _fail(message: str) -> FunctionCommand:
    def report(state, host) -> bool:
        host.log_styled(message, fg="red", log_func=logger.error)
        return False

    return FunctionCommand(report, (), {})


def host_operation(func):
    """`@operation()` whose `HostError` fails only the host it was raised for."""

    @functools.wraps(func)
    def body(*args, **kwargs):
        try:
            yield from func(*args, **kwargs) or ()  # an operation that never yields returns None
        except HostError as error:
            yield from error.record()
            yield _fail(str(error))

    return operation()(body)
