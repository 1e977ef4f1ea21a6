"""Where the escrow lives: age-encrypted files on the operator's machine, beside the archive ledger.

    $PYINFRA_BACKUP_STATE/escrow/<host>/<job>.key.age     borg key export, age-encrypted to the recipients
    $PYINFRA_BACKUP_STATE/escrow/<host>/<job>.pass.age    the passphrase as the job's passCommand prints it
    $PYINFRA_BACKUP_STATE/escrow/<host>/<job>.json        repo id, key digest, recipients hash, time (no secret)

Directories 0700, files 0600, each written atomically (temp file in the same directory, fsync, rename).
An escrow that is replaced (a new key, new recipients) is moved to `<host>/replaced/<time>/` first: an old
repo's key is never lost. Secrets are encrypted in memory (pyrage) before anything is written.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

from pyinfra_backup.age import Recipient, recipient_set_hash
from pyinfra_backup.escrow import EscrowError, Kept
from pyinfra_backup.ledger_store import state_dir

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*$")
KINDS = ("key.age", "pass.age", "json")


def escrow_dir(host: str) -> Path:
    if not _NAME.match(host):
        raise EscrowError(f"not a name for an escrow directory: {host!r}")
    return state_dir() / "escrow" / host


def paths(host: str, job: str) -> dict[str, Path]:
    """{"key.age": ..., "pass.age": ..., "json": ...} of the job's escrow."""
    if not _NAME.match(job):
        raise EscrowError(f"not a name for an escrow file: {job!r}")
    return {kind: escrow_dir(host) / f"{job}.{kind}" for kind in KINDS}


def recipients_of(data: dict) -> list[Recipient]:
    """`borgbackup.escrow.recipients` of host data, parsed (validated before any run)."""
    escrow = ((data.get("borgbackup") or {}).get("escrow") or {})
    return [Recipient.parse(text) for text in escrow.get("recipients") or ()]


def identities_of(data: dict) -> list[str]:
    return list(((data.get("borgbackup") or {}).get("escrow") or {}).get("identities") or ())


def load(host: str, job: str) -> Kept | None:
    """What is kept beside the job's escrow, None when there is no escrow."""
    path = paths(host, job)["json"]
    try:
        return Kept.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise EscrowError(f"the escrow record {path} cannot be read ({error}); move it away to escrow anew") from None


def _write(path: Path, data: bytes) -> None:
    from pyinfra_backup.agenix import fsync_dir

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def store(host: str, job: str, mode: str, export: str, passphrase: bytes | None, recipients: list[Recipient]) -> Kept:
    """Encrypt the key export (and passphrase) to `recipients` in memory and write the job's escrow;
    the one it replaces is kept under `replaced/`."""
    from pyinfra_backup.agenix import encrypt_to
    from pyinfra_backup.escrow import key_digest, repo_id_of

    if not recipients:
        raise EscrowError(f"{host}: borgbackup.escrow.recipients: expected at least one age recipient")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    kept = Kept(repo_id_of(export), key_digest(export), recipient_set_hash(recipients), mode, now, passphrase is not None)
    files = paths(host, job)
    encrypted = {"key.age": encrypt_to(export.encode(), recipients)}
    if passphrase is not None:
        encrypted["pass.age"] = encrypt_to(passphrase, recipients)
    try:
        _keep_aside(files, now)
        for kind, data in encrypted.items():
            _write(files[kind], data)
        _write(files["json"], kept.to_json().encode())  # last: the record says what the files hold
    except OSError as error:
        raise EscrowError(f"{host}: job {job}: the escrow in {files['json'].parent} cannot be written ({error})") from None
    return kept


def _keep_aside(files: dict[str, Path], now: str) -> None:
    present = [path for path in files.values() if path.exists()]
    if not present:
        return
    aside = present[0].parent / "replaced" / now
    aside.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in present:
        os.replace(path, aside / path.name)


def decrypt(host: str, job: str, kind: str, identities: list[str]) -> bytes:
    """The plaintext of the job's `key.age` or `pass.age`, decrypted in memory with `identities`
    (paths on this machine: age identity files, SSH private keys, age-plugin-yubikey identities)."""
    from pyinfra_backup.agenix import IdentityError, load_identities

    path = paths(host, job)[kind]
    if not identities:
        raise EscrowError(f"{host}: borgbackup.escrow.identities: needed to decrypt {path} (give the paths of "
                          "identities of the escrow recipients, e.g. --data 'borgbackup={...}' or group data)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EscrowError(f"{host}: job {job}: no escrow at {path}") from None
    try:
        return load_identities(identities).decrypt(data)
    except IdentityError as error:
        raise EscrowError(f"{host}: borgbackup.escrow.identities: {error}") from None
    except Exception as error:  # pyrage's DecryptError: none of the identities is a recipient
        raise EscrowError(f"{host}: job {job}: {path} does not decrypt with {', '.join(identities)} ({error})") from None
