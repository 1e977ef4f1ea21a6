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
import secrets
import subprocess
import tempfile

from pyinfra import host, inventory, logger
from pyinfra.api import FunctionCommand

from facts.borg import RestoreTarget, client_state, forget, host_plan
from pyinfra_backup.borg import STAMP, export_tar_argv, list_argv, parse_list
from pyinfra_backup.relay import RELAY_DIR, REPLACED_DIR, commit_script, discard_script, pick_archive, stage_script
from tasks import operator
from tasks.common import HostError, host_operation, run_in_operation

class Hidden:
    """A secret handed to a command at execute time; pyinfra prints commands with their arguments."""

    def __init__(self, value: bytes):
        self.value = value

    def __repr__(self) -> str:
        return "Hidden(***)"


def _stream_to_stage(host, planned, where, secret: Hidden, name: str, paths, exclude, stage: str):
    """borg export-tar here, piped into the host's stage -> (None, what was piped) when borg exited 0
    and the host staged exactly the bytes sent (same sha256), else (why not, None)."""
    with tempfile.TemporaryFile() as borg_errors, operator.ssh_logged(where) as (logged, ssh_said):
        proc = operator.popen_borg(planned, logged, export_tar_argv(planned.job, where.url, name, paths, exclude), secret.value,
                                   stdout=subprocess.PIPE, stderr=borg_errors)
        try:
            piped = operator.pipe_to_host(host, proc, stage_script(stage))
        except operator.OperatorError as error:
            return str(error), None
        borg_rc = proc.wait()
        borg_errors.seek(0)
        reason = (borg_errors.read().decode(errors="replace").strip().splitlines() or [f"exit status {borg_rc}"])[-1]
        reason += operator.ssh_reason(where, ssh_said(), "export-tar") if borg_rc != 0 else ""
    staged = piped.output.split()[-1] if piped.output.startswith("staged ") else ""
    if borg_rc != 0:
        return f"borg export-tar {name} failed on the operator's machine: {reason}", None
    if piped.status != 0:
        return f"unpacking {name} on the host failed: {piped.errors.strip() or piped.status}", None
    if staged != piped.sha256:
        return f"the host received another stream than the operator sent (sha256 {staged or '?'} != {piped.sha256})", None
    return None, piped


def _relay(state, host, planned, where, secret: Hidden, name: str, paths: tuple[str, ...], exclude: tuple[str, ...],
           target: str, marker: str) -> bool:  # noqa: F811 (pyinfra passes `host`)
    """Two phases: the host stages the stream; only when the operator has borg's exit status 0 and the
    same digest as the host does the host put the staged files in place (else the stage is removed)."""
    stage = f"{RELAY_DIR}/stage.{secrets.token_hex(6)}"
    failure, piped = _stream_to_stage(host, planned, where, secret, name, paths, exclude, stage)
    if failure:
        run_in_operation(state, host, discard_script(stage))
        host.log_styled(f"relay of {name}: {failure}; nothing in place changed", fg="red", log_func=logger.error)
        return False
    ok, output = run_in_operation(state, host, commit_script(stage, piped.sha256, target, name, marker))
    if not ok:
        host.log_styled(f"relay of {name}: putting the staged files in place failed: "
                        f"{' '.join(output.stderr_lines) or 'no reason given'}", fg="red", log_func=logger.error)
        return False
    forget(host)  # the host's files changed (its backup identity too, from a state archive)
    for line in output.stdout_lines:
        host.log_styled(line, log_func=logger.info)
    host.log_styled(f"relayed {name}: {piped.sent / 1e6:.1f} MB in {piped.seconds:.1f}s (sha256 {piped.sha256[:12]} "
                    "on both ends)", log_func=logger.info)
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
        operator.ensure_key(host, planned, where)  # a keyfile-mode repo: the escrowed key, when this machine has none
        secret = operator.passphrase(host, planned)
        listing = parse_list(operator.run_borg(planned, where, list_argv(planned.job, where), secret), 0, "")
        name = pick_archive(listing, planned.job.base_name(client_state(host).hostname), archive)
    except (operator.OperatorError, ValueError) as error:
        raise HostError(f"{host.name}: job {job}: {error}") from None
    return planned, where, secret, name


@host_operation
def restore(job: str, archive: str = "latest", target: str = "/", paths: list[str] | None = None, overwrite: bool = False,
            exclude: list[str] | tuple[str, ...] = ()):
    """Restore an archive of the job through the operator's machine (its key, its borg), in two
    phases: the host stages the stream; only once borg exited 0 and both ends saw the same sha256
    does anything in `target` change. Restoring the same archive again changes nothing.

    + job: the job (`borgbackup.jobs.<job>`), its repo on a fleet server
    + archive: `latest`, `state` (the newest state archive) or an archive name
    + target: absolute path; `/` puts files back in their places (numeric owners and modes)
    + paths: only these archive paths; exclude: borg patterns left out (e.g. `pp:var/cache`)
    + overwrite: needed for a non-empty target; replaced files go to /var/lib/pyinfra-backup/replaced/<archive>/

    **Example:**

    .. code:: python

        relay.restore(job="system", archive="state", overwrite=True)   # a freshly installed host
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
    yield FunctionCommand(_relay, (planned, where, Hidden(secret), name, tuple(paths or ()), tuple(exclude), target,
                                   RestoreTarget.marker(series)), {})
