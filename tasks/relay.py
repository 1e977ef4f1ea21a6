"""Restores relayed by the operator's machine, for a host that cannot reach its repo itself.

A freshly installed host has no backup key and cannot decrypt its agenix secrets (its SSH host
keys are new), so it can neither open its repo nor run its passCommand. The operator's machine
can: it runs borg with the operator's key and `recover_passCommand`, and streams the archive over
the host's own SSH connection into `tar` on the host (pyinfra_backup/relay.py). Identity comes
back first (the state archive); then the host enrolls and decrypts its secrets as usual.

    pyinfra -y INVENTORY tasks.relay.restore job=system archive=state overwrite=true --limit web01
    pyinfra -y INVENTORY tasks.relay.restore job=system target=/srv/restore --limit web01
"""

from __future__ import annotations

import re
import subprocess
import tempfile

from pyinfra import host, inventory, logger
from pyinfra.api import FunctionCommand

from facts.borg import RestoreTarget, client_state, forget, host_plan
from pyinfra_backup.borg import STAMP, export_tar_argv, list_argv, parse_list
from pyinfra_backup.relay import REPLACED_DIR, pick_archive, unpack_script
from tasks import operator
from tasks.common import HostError, host_operation

class Hidden:
    """A secret handed to a command at execute time; pyinfra prints commands with their arguments."""

    def __init__(self, value: bytes):
        self.value = value

    def __repr__(self) -> str:
        return "Hidden(***)"


def _relay(state, host, planned, where, secret: Hidden, name: str, paths: tuple[str, ...], exclude: tuple[str, ...],
           script: str) -> bool:  # noqa: F811 (pyinfra passes `host`)
    """borg export-tar here, piped into the host's unpack script over its SSH connection."""
    with tempfile.TemporaryFile() as borg_errors, operator.ssh_logged(where) as (logged, ssh_said):
        proc = operator.popen_borg(planned, logged, export_tar_argv(planned.job, where.url, name, paths, exclude), secret.value,
                                   stdout=subprocess.PIPE, stderr=borg_errors)
        try:
            piped = operator.pipe_to_host(host, proc, script)
        except operator.OperatorError as error:
            host.log_styled(f"relay of {name}: {error}", fg="red", log_func=logger.error)
            return False
        borg_rc = proc.wait()
        borg_errors.seek(0)
        reason = (borg_errors.read().decode(errors="replace").strip().splitlines() or [f"exit status {borg_rc}"])[-1]
        reason += operator.ssh_reason(where, ssh_said(), "export-tar") if borg_rc != 0 else ""
    if borg_rc != 0:
        host.log_styled(f"borg export-tar {name} failed on the operator's machine: {reason}", fg="red", log_func=logger.error)
        return False
    if piped.status != 0:
        host.log_styled(f"unpacking {name} on the host failed: {piped.errors.strip() or piped.status}", fg="red",
                        log_func=logger.error)
        return False
    forget(host)  # the host's files changed (its backup identity too, from a state archive)
    for line in piped.output.splitlines():
        host.log_styled(line, log_func=logger.info)
    host.log_styled(f"relayed {name}: {piped.sent / 1e6:.1f} MB in {piped.seconds:.1f}s", log_func=logger.info)
    return True


def operator_archive(job: str, archive: str):
    """(planned job, the operator's location, passphrase, archive name) for `archive` of the job
    (`latest`, `state` or a name), as the operator's borg sees the repo; HostError when it cannot."""
    planned = next((p for p in host_plan(host, inventory) if p.job.name == job), None)
    if planned is None:
        raise HostError(f"{host.name}: borgbackup.jobs.{job}: no such job")
    if planned.server is None:
        raise HostError(f"{host.name}: job {job}: its repo is not on a fleet server; "
                        "a relayed restore needs the operator's key (use tasks.borg.restore on the host)")
    where = operator.location(host, planned)
    try:
        secret = operator.passphrase(host, planned)
        listing = parse_list(operator.run_borg(planned, where, list_argv(planned.job, where), secret), 0, "")
        name = pick_archive(listing, planned.job.base_name(client_state(host).hostname), archive)
    except (operator.OperatorError, ValueError) as error:
        raise HostError(f"{host.name}: job {job}: {error}") from None
    return planned, where, secret, name


@host_operation
def restore(job: str, archive: str = "latest", target: str = "/", paths: list[str] | None = None, overwrite: bool = False,
            exclude: list[str] | tuple[str, ...] = ()):
    """Restore an archive of the job through the operator's machine: `latest` (default), `state`
    (the newest state archive) or a name; into `target` (default `/`, the original places), with
    numeric owners and modes. A non-empty target needs `overwrite=True`; every file it replaces
    is kept under /var/lib/pyinfra-backup/replaced/<archive>/. Restoring the same archive into the
    same target again changes nothing. `exclude`: borg patterns left out (e.g. `pp:var/cache`).
    Needs the job's repo on a fleet server (the operator's key).

    Example: `restore(job="system", archive="state", overwrite=True)` on a freshly installed host.
    """
    if not target.startswith("/"):
        raise HostError(f"{host.name}: restore target must be an absolute path, got {target!r}")
    planned, where, secret, name = operator_archive(job, archive)
    series = f"{target}#{re.sub('-' + STAMP + '$', '', name)}"  # identity and data both go to /: one marker each
    current = host.get_fact(RestoreTarget, path=target, key=series)
    if current.entries and current.restored == name:
        host.noop(f"{job}: {name} already restored into {target}")
        return
    if current.entries and not overwrite:
        raise HostError(f"{host.name}: restore target {target} is not empty ({current.entries} entries): refusing "
                        f"to overwrite; pass overwrite=True (replaced files are kept in {REPLACED_DIR}/{name}/)")
    script = unpack_script(target, name, RestoreTarget.marker(series))
    yield FunctionCommand(_relay, (planned, where, Hidden(secret), name, tuple(paths or ()), tuple(exclude), script), {})
