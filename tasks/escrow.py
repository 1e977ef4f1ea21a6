"""Key and passphrase escrow: every job's borg key and passphrase kept age-encrypted on the operator's machine.

    pyinfra -y INVENTORY tasks.escrow.keep job=system --limit web01     # (tasks.backup.run does it per job)

A keyfile-mode repo is unreadable without the key file on the client; a repokey repo without the key in its
config; both without the passphrase. `keep` stores `borg key export` and the passphrase (as the passCommand
prints it on the host) encrypted to `borgbackup.escrow.recipients` (pyinfra_backup/escrow_store.py). Both are
read in one command whose output pyinfra captures but never prints, and encrypted here at once, in memory.
Whether the escrow is current is decided from the key digest the host's one fact read already shows.
`import_key` gives a host without its key file the escrowed one back (`borg key import`, key on stdin).
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import FunctionCommand

from facts.borg import client_at_start, client_state, forget, server_key_digests
from pyinfra_backup import escrow_store
from pyinfra_backup.age import recipient_set_hash
from pyinfra_backup.borg import borg_env
from pyinfra_backup.escrow import EscrowError, digest_sources, export_sections, is_keyfile, needs_escrow
from pyinfra_backup.shell import parse_sections, sectioned_script, with_env
from tasks import operator
from tasks.borg import _job, _created
from tasks.common import HostError, host_operation, run_as_login


def _escrow(state, host, planned, recipients) -> bool:  # noqa: F811 (pyinfra passes `host`)
    """Read the key export and passphrase on the host (never printed), encrypt and store them here."""
    job = planned.job
    script = sectioned_script(export_sections(job, planned.location.url, borg_env(job, planned.location)))
    ok, output = run_as_login(host, script)
    sections = parse_sections(output.stdout_lines) if ok else {}
    key, secret = sections.get("key"), sections.get("pass")
    if key is None or not key.ok or (secret is not None and not secret.ok):
        failed = "borg key export" if key is None or not key.ok else "the passCommand"
        reason = (key.error if failed == "borg key export" and key else secret.error if secret else "no output")
        host.log_styled(f"{host.name}: job {job.name}: escrow: {failed} failed on the host: {reason}",
                        fg="red", log_func=logger.error)
        return False
    try:
        kept = escrow_store.store(host.name, job.name, job.mode, key.text + "\n",
                                  secret.text.encode() if secret else None, recipients)
    except (EscrowError, ValueError) as error:
        host.log_styled(f"{host.name}: job {job.name}: escrow: {error}", fg="red", log_func=logger.error)
        return False
    host.log_styled(f"{job.name}: key of repo {kept.repo_id[:12]} (digest {kept.key_digest[:12]})"
                    f"{' and passphrase' if secret else ''} escrowed to {len(recipients)} recipient(s) in "
                    f"{escrow_store.escrow_dir(host.name)}", log_func=logger.info)
    if is_keyfile(job.mode) and planned.server is not None and not operator.operator_has_key(kept.repo_id):
        _give_operator(host, planned, (key.text + "\n").encode())
    return True


def _give_operator(host, planned, export: bytes) -> None:
    """The operator's borg prunes and lists a keyfile-mode fleet repo too: it gets the key while it is in memory
    here. A failure is said, the escrow stands (a recovery imports the key from it)."""
    try:
        operator.import_key(planned, operator.location(host, planned), export)
    except operator.OperatorError as error:
        host.log_styled(f"{host.name}: job {planned.job.name}: the operator's borg has no key file for the repo: "
                        f"{error}", fg="yellow", log_func=logger.warning)
        return
    host.log_styled(f"{planned.job.name}: key imported into the operator's borg (keyfile mode: its prune needs it)",
                    log_func=logger.info)


@host_operation
def keep(job: str):
    """Escrow the job's `borg key export` and passphrase when there is no escrow yet, the repo's key
    changed (its digest differs from the one kept beside the escrow), or the recipients changed.

    + job: the job (`borgbackup.jobs.<job>`); needs `borgbackup.escrow.recipients`

    **Example:**

    .. code:: python

        escrow.keep(job="system")   # tasks.backup.run calls it after each job's create
    """
    planned = _job(job)
    recipients = escrow_store.recipients_of(host.data.dict())
    if planned is None or not recipients or planned.job.mode == "none":
        host.noop(f"{job}: nothing to escrow (no borgbackup.escrow.recipients, unencrypted, or failed earlier)")
        return
    kept, start = _kept(job), client_at_start(host)
    seen = start.key_digests if is_keyfile(planned.job.mode) else server_key_digests(planned, host.name)
    visible = digest_sources(planned.job, planned.server is None) is not None or seen is not None
    why = needs_escrow(kept, recipient_set_hash(recipients), seen or start.key_digests, visible,
                       bool(start.records[job].last_archive), job in _created())
    if why is None:
        host.noop(f"{job}: escrow current" + (f" (key digest {kept.key_digest[:12]})" if kept else " (no repo yet)"))
        return
    host.log_styled(f"{job}: escrow: {why}", log_func=logger.info)
    yield FunctionCommand(_escrow, (planned, recipients), {})


def _kept(job: str):
    try:
        return escrow_store.load(host.name, job)
    except EscrowError as error:
        raise HostError(str(error)) from None


def _import(state, host, planned, identities) -> bool:  # noqa: F811 (pyinfra passes `host`)
    """The escrowed key, decrypted here in memory, into `borg key import URL -` on the host (stdin only)."""
    try:
        export = escrow_store.decrypt(host.name, planned.job.name, "key.age", identities)
    except EscrowError as error:
        host.log_styled(str(error), fg="red", log_func=logger.error)
        return False
    env = borg_env(planned.job, planned.location)
    command = with_env(env, ["borg", *planned.job.extra_args, "key", "import", planned.location.url, "-"])
    sent = operator.send_to_host(host, export, command)
    forget(host)
    if sent.status != 0:
        host.log_styled(f"{host.name}: job {planned.job.name}: borg key import failed on the host: "
                        f"{sent.errors.strip() or sent.status}", fg="red", log_func=logger.error)
        return False
    host.log_styled(f"{planned.job.name}: escrowed key imported on the host", log_func=logger.info)
    return True


@host_operation
def import_key(job: str):
    """Put the escrowed key of a keyfile-mode job back on a host that has none (a reinstalled host):
    decrypted on this machine with `borgbackup.escrow.identities`, sent on stdin to `borg key import`.

    + job: the job (`borgbackup.jobs.<job>`) in `keyfile` or `keyfile-blake2` mode

    **Example:**

    .. code:: python

        escrow.import_key(job="system")   # deploys/recover.py, after the host's identity is back
    """
    planned = _job(job)
    kept = _kept(job) if planned else None
    if planned is None or not is_keyfile(planned.job.mode) or kept is None:
        host.noop(f"{job}: no keyfile-mode escrow to import")
        return
    if kept.repo_id in client_state(host).key_digests:
        host.noop(f"{job}: the host has the key of repo {kept.repo_id[:12]}")
        return
    yield FunctionCommand(_import, (planned, escrow_store.identities_of(host.data.dict())), {})

