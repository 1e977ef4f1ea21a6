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
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS


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


def run_in_operation(state, host, command: str):
    """Run `command` from a FunctionCommand of the executing operation with that operation's
    connector arguments (`_sudo`, `_su_user`, `_env`, ... or `--sudo`), which pyinfra applies to
    yielded commands but not to a function's own `host.run_shell_command`. -> (ok, CommandOutput)."""
    arguments = state.get_op_data_for_host(host, host.executing_op_hash).global_arguments
    connector_arguments = {key: arguments[key] for key in CONNECTOR_ARGUMENT_KEYS if key in arguments}
    return host.run_shell_command(StringCommand(command), print_output=state.print_output,
                                  print_input=state.print_input, **connector_arguments)
