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
from collections.abc import Callable, Iterable

from paramiko import SSHException
from pyinfra import logger
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.command import PyinfraCommand
from pyinfra.api.util import log_host_command_error, print_host_combined_output
from pyinfra.connectors.util import make_unix_command_for_host


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


class Contained(PyinfraCommand):
    """A command whose failure is reported and handed to `on_failure` instead of stopping the
    operation: an operation that runs several independent steps (every job of a host) goes on
    with the next one. Shell commands keep pyinfra's connector arguments (sudo, env) and output.

        yield Contained(StringCommand("borg create ..."), lambda: failed.add("system"))
    """

    def __init__(self, command: PyinfraCommand, on_failure: Callable[[], None]):
        super().__init__()
        self.command, self.on_failure = command, on_failure

    def __repr__(self) -> str:
        return f"Contained({self.command!r})"

    def execute(self, state, host, connector_arguments) -> bool:
        try:
            if isinstance(self.command, StringCommand):
                ok, output = self.command.execute(state, host, connector_arguments)
                if not ok and not state.print_output:
                    print_host_combined_output(host, output)
            else:
                ok = self.command.execute(state, host, connector_arguments)
        except (TimeoutError, OSError, SSHException) as error:
            log_host_command_error(host, error)
            ok = False
        if ok is False:
            self.on_failure()
        return True


def contained(commands: Iterable, on_failure: Callable[[], None]):
    """Each command (a string or a pyinfra command) as `Contained`."""
    for command in commands:
        yield Contained(StringCommand(command) if isinstance(command, str) else command, on_failure)


def login_arguments(host) -> dict:
    """The connector arguments (`_sudo`, `_sudo_user`, `_su_user`, `_env`, ...) that pyinfra gives the commands
    an operation yields on `host`: the executing operation's (execute time), the operation being collected, or,
    outside any operation, the host data's and the run's (`--sudo`), as pyinfra's facts get them."""
    if host.executing_op_hash:
        arguments = host.state.get_op_data_for_host(host, host.executing_op_hash).global_arguments
    elif host.current_op_global_arguments:
        arguments = host.current_op_global_arguments
    else:
        arguments, _ = pop_global_arguments(host.state, host, {})
    return {key: arguments[key] for key in CONNECTOR_ARGUMENT_KEYS if key in arguments}


def run_as_login(host, command: str, print_output: bool = False, print_input: bool = False):
    """`host.run_shell_command(command)` with `login_arguments`: every command our Python callbacks run on a host
    themselves goes through here, so that a login as a normal user with `--sudo` / `_sudo` reaches root's files
    as the yielded commands do. -> (ok, CommandOutput)."""
    return host.run_shell_command(StringCommand(command), print_output=print_output, print_input=print_input,
                                  **login_arguments(host))


def login_command_line(host, command: str) -> str:
    """`command` as the host's login runs it with `login_arguments` (e.g. `sudo -H -n sh -c '...'`), for a
    channel of our own (a stream piped into the host)."""
    arguments = {key: value for key, value in login_arguments(host).items() if key not in _CHANNEL_ONLY}
    return make_unix_command_for_host(host.state, host, StringCommand(command), **arguments).get_raw_value()


_CHANNEL_ONLY = ("_success_exit_codes", "_timeout", "_get_pty", "_stdin")  # the connector's, not the command line's


def run_in_operation(state, host, command: str):
    """`run_as_login` from a FunctionCommand of the executing operation, its output shown as pyinfra shows a
    yielded command's. -> (ok, CommandOutput)."""
    return run_as_login(host, command, print_output=state.print_output, print_input=state.print_input)


def explained(command: str, prefix: str | tuple[str, ...]) -> FunctionCommand:
    """`command` run as the operation's commands are, its own explanation (output lines starting with
    `prefix`, in order) logged for the operator, in red when it failed: pyinfra alone shows a failed
    command's output only with `-v`."""

    def run(state, host) -> bool:
        ok, output = run_in_operation(state, host, command)
        lines = [line for line in output.output_lines if line.startswith(prefix)] or output.stderr_lines[-3:]
        for line in lines:
            host.log_styled(f"{host.name}: {line}", fg=None if ok else "red", log_func=logger.info if ok else logger.error)
        return ok

    return FunctionCommand(run, (), {})
