"""Host identity ("system state") snapshots, their age-encrypted copies, and their restore.

The files of `system_state.paths` (machine-id, SSH host keys, /var/lib/nixos, ...) are stored as
a state archive `<archiveBaseName>-state-<UTC timestamp>` in the repo of `system_state.job`, only
when their digest changed since the last one (pyinfra_backup/state.py). `deploys/backup.py`
runs `snapshot` (and `encrypted_copy` with `system_state.ageRecipients`) for hosts with
`system_state`; `restore` is run by hand:

    pyinfra -y INVENTORY tasks.state.restore --limit HOST                 # the latest state archive
    pyinfra -y INVENTORY tasks.state.restore archive=NAME --limit HOST
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import FunctionCommand
from pyinfra.facts.server import Hostname

from facts.state import StateArchive, StateDigest
from pyinfra_backup.borg import TIMESTAMP_FORMAT, borg_env, create_argv, explain_error, extract_argv
from pyinfra_backup.shell import with_env
from pyinfra_backup.state import (
    RESTORE_DIR, LiveState, StateSettings, copy_key, copy_name, follow_up, restore_plan, restore_script, roots_of,
    snapshot_command, state_base, tar_command,
)
from tasks.borg import _job, _lock_wait, _planned, step_failed
from tasks.common import HostError, host_operation, run_as_login


def state_job(of_host) -> str | None:
    """The job whose repo stores the host's state archives; None when the host has no `system_state`."""
    settings = StateSettings.from_data(of_host.data.dict())
    return settings.job if settings else None


def age_recipients(of_host) -> tuple[str, ...]:
    settings = StateSettings.from_data(of_host.data.dict())
    return settings.age_recipients if settings else ()


class StateError(HostError):
    """The state step failed on this host: its message names the host and why; `borg.outcome`
    names it again among the run's failures."""

    def __init__(self, message: str):
        super().__init__(f"{host.name}: {message}")
        step_failed(host, message)


def _settings() -> StateSettings:
    data = host.data.dict()
    settings = StateSettings.from_data({**data, "system_state": data.get("system_state") or {}})
    if settings.job is None:
        raise StateError("system_state.job: no job to keep the state archives: name one (the host has not exactly one job)")
    return settings


def _live(settings: StateSettings) -> LiveState:
    """The live files, read once per run (the state operations do not change them)."""
    if not hasattr(host, "_pyinfra_backup_state"):
        host._pyinfra_backup_state = host.get_fact(StateDigest, paths=list(settings.paths), job=settings.job)
    live = host._pyinfra_backup_state
    if live.unreadable:
        raise StateError("system_state.paths: cannot read " + "; ".join(live.unreadable)
                         + " (nothing was stored; fix the path or drop it from system_state.paths)")
    return live


def _skipped(live: LiveState) -> str:
    return f"; not on this host, skipped: {', '.join(live.skipped)}" if live.skipped else ""


def _run(state, host, command: str, what: str, done: str) -> bool:  # noqa: F811 (pyinfra passes `host`)
    """Run a command; on failure log why (borg's last line, explained) and tell `outcome`."""
    ok, output = run_as_login(host, command)
    if ok:
        host.log_styled(done, log_func=logger.info)
        return True
    lines = [line.strip() for line in output.stderr_lines if line.strip()]
    reason = f"{what} failed: {explain_error(lines[-1]) if lines else 'no error message'}"
    host.log_styled(f"{host.name}: {reason}", fg="red", log_func=logger.error)
    step_failed(host, reason)
    return False


@host_operation
def snapshot():
    """Store the host's identity files as a state archive in the repo of `system_state.job`, when
    their digest (content, type, owner, mode) differs from the last state archive's. Missing paths
    are skipped and named; an unreadable one fails the host, nothing stored.

    Example: `snapshot()` after the job's own steps (deploys/backup.py).
    """
    settings = _settings()
    planned = _job(settings.job)
    if planned is None:
        return
    live = _live(settings)
    if not live.roots:
        host.noop(f"state: none of system_state.paths exists{_skipped(live)}")
        return
    if live.digest == live.recorded_digest:
        host.noop(f"state: unchanged since {live.recorded_archive} ({len(live.entries)} entries){_skipped(live)}")
        return
    job = replace(planned.job, paths=live.roots, exclude=(), patterns=())  # the job's selection is for its data
    argv = create_argv(job, state_base(job.base_name(live.hostname)), planned.location.url, _lock_wait())
    command = snapshot_command(settings.job, with_env(borg_env(job, planned.location), argv), live.digest)
    done = f"state: stored a state archive of {len(live.entries)} entries in the repo of job {settings.job}{_skipped(live)}"
    yield FunctionCommand(_run, (command, f"state archive (job {settings.job})", done), {})


@host_operation
def encrypted_copy():
    """With `system_state.ageRecipients`: the state files as a tarball, encrypted in memory on the
    operator's machine to those recipients, written atomically to `<system_state.ageDir>/<host>/`
    when the files (or the recipients) changed since the last copy. For a recovery without the
    borg passphrase: `age -d -i KEY FILE | tar -xpf - --numeric-owner -C /` on the host.

    Example: `encrypted_copy()` after `snapshot()` (deploys/backup.py).
    """
    settings = _settings()
    if not settings.age_recipients:
        host.noop("state: no system_state.ageRecipients, no encrypted copy")
        return
    live = _live(settings)
    if not live.roots:
        host.noop(f"state: none of system_state.paths exists{_skipped(live)}")
        return
    key = copy_key(live.digest, settings.age_recipients)
    directory = Path(settings.age_dir) / host.name
    existing = sorted(directory.glob(f"*-{key}.tar.age"))
    if existing:
        host.noop(f"state: encrypted copy {existing[-1]} holds these files for these recipients")
        return
    base = _planned(settings.job).job.base_name(live.hostname)
    yield FunctionCommand(_write_copy, (live.roots, settings.age_recipients, directory, base, key), {})


def _write_copy(state, host, roots, recipients, directory: Path, base: str, key: str) -> bool:  # noqa: F811
    from pyinfra_backup.age import Recipient  # lazy: only hosts with ageRecipients need age
    from pyinfra_backup.agenix import atomic_write_bytes, encrypt_to

    ok, output = run_as_login(host, tar_command(roots))
    try:
        tarball = base64.b64decode("".join(output.stdout_lines), validate=True) if ok else b""
    except binascii.Error:
        ok = False
    if not ok:
        lines = [line for line in output.stderr_lines if not line.startswith("tar: Exiting with failure")]
        reason = "state: encrypted copy failed: tar of the state files failed: " + " ".join(lines[-2:])
        host.log_styled(f"{host.name}: {reason}", fg="red", log_func=logger.error)
        step_failed(host, reason)
        return False
    ciphertext = encrypt_to(tarball, [Recipient.parse(r) for r in recipients], what="system_state.ageRecipients")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime(TIMESTAMP_FORMAT)
    target = directory / copy_name(base, stamp, key)
    atomic_write_bytes(target, ciphertext)
    host.log_styled(f"state: encrypted copy written to {target} ({len(tarball)} bytes of tar, "
                    f"{len(recipients)} recipients)", log_func=logger.info)
    return True


@host_operation
def restore(archive: str = "latest"):
    """Put a state archive's files back (default: the latest state archive of `system_state.job`)
    with their exact owner and mode, in order: /var/lib/nixos and machine-id, then the SSH host
    keys, then the rest. Only files that differ are replaced; each is first copied to
    /var/lib/pyinfra-backup/state/replaced-<UTC time>/. Live files the archive does not hold stay.
    Says what must follow (sshd restart, reboot for machine-id; on NixOS: before the first switch).

    Example: `pyinfra -y INVENTORY tasks.state.restore --limit host01` (or `archive=NAME`).
    """
    settings = _settings()
    planned = _planned(settings.job)
    base = planned.job.base_name(host.get_fact(Hostname))
    env = borg_env(planned.job, planned.location)
    found = host.get_fact(StateArchive, borg=with_env(env, ["borg", *planned.job.extra_args]),
                          url=planned.location.url, base_name=base, archive=archive)
    if found["error"]:
        raise HostError(f"{host.name}: job {settings.job}: cannot read the state archives: {found['error']}")
    if not found["name"]:
        have = ", ".join(found["names"][-3:]) or "none yet"
        raise HostError(f"{host.name}: job {settings.job}: no state archive {archive!r} (latest state archives: {have})")
    name, items = found["name"], found["items"]
    live = host.get_fact(StateDigest, paths=roots_of(items), job=settings.job, literal=True)
    todo = restore_plan(items, live.entries)
    if not todo:
        older = [n for n in found["names"] if n < name][-2:]
        hint = f"; older state archives: {', '.join(older)}" if older else ""
        host.noop(f"state: the live files equal {name} ({len(items)} entries){hint}")
        return
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    extract = with_env(env, extract_argv(planned.job, planned.location.url, name))
    yield restore_script(todo, extract, stamp)
    notes = "; ".join(follow_up(todo)) or "nothing else to do"
    message = (f"state: restored {len(todo)} of {len(items)} entries from {name} (copies of the files they "
               f"replaced: {RESTORE_DIR}/replaced-{stamp}/). Next: {notes}")
    yield FunctionCommand(_tell, (message,), {})


def _tell(state, host, message: str) -> bool:  # noqa: F811 (pyinfra passes `host`)
    host.log_styled(message, fg="yellow", log_func=logger.warning)
    return True

