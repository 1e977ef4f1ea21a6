"""Where the archive ledger lives: files on the operator's machine, out of every client key's reach.

    $PYINFRA_BACKUP_STATE/ledger/<server>/<repo>.json      (default ~/.local/state/pyinfra-backup,
                                                          or $XDG_STATE_HOME/pyinfra-backup)

`<server>` is the repo server's inventory name, `<repo>` the repo's name (the client's inventory name).
Directories are 0700, files 0600, each replaced atomically (a temp file in the same directory, fsync,
rename). The logic is in `pyinfra_backup/ledger.py`; this module only reads and writes.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from pyinfra_backup.ledger import Ledger, from_json, to_json

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*$")


class LedgerError(Exception):
    """The ledger file cannot be read or written; the message names it."""


def state_dir() -> Path:
    """The operator's state directory (`$PYINFRA_BACKUP_STATE`)."""
    explicit = os.environ.get("PYINFRA_BACKUP_STATE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local/state") / "pyinfra-backup"


def ledger_path(server: str, repo: str) -> Path:
    for name in (server, repo):
        if not _NAME.match(name):
            raise LedgerError(f"not a name for a ledger file: {name!r}")
    return state_dir() / "ledger" / server / f"{repo}.json"


def load(server: str, repo: str) -> Ledger:
    """The repo's ledger; an empty one when none was written yet."""
    path = ledger_path(server, repo)
    try:
        return from_json(path.read_text())
    except FileNotFoundError:
        return Ledger()
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise LedgerError(f"the archive ledger {path} cannot be read ({error}): maintenance stops; "
                          "restore it or move it away") from None


def save(server: str, repo: str, ledger: Ledger) -> Path:
    """Replace the repo's ledger atomically (0600 in a 0700 directory)."""
    path = ledger_path(server, repo)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(to_json(ledger))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        raise LedgerError(f"the archive ledger {path} cannot be written ({error})") from None
    return path
