"""A job's passphrase made on the host itself, for hosts whose secrets are not managed otherwise.

NixOS hosts usually get theirs from agenix (`passCommand = "cat /run/agenix/borg-passphrase"`); a plain
Linux client needs a file that only root can read. This makes one on the host, from the host's own
random source, once: the passphrase never crosses the network and is never printed.

    pyinfra -y INVENTORY tasks.passphrase.generate --limit clients
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.facts.files import File

from pyinfra_backup.shell import new_secret_file
from tasks.common import HostError, host_operation

DEFAULT_PATH = "/var/lib/pyinfra-backup/passphrase"


@host_operation
def generate(path: str = DEFAULT_PATH, nbytes: int = 32):
    """Make a random passphrase file (0600, base64 of `nbytes` random bytes) unless it exists;
    an existing file is never replaced, whatever it holds (an empty one is an error to look at).

    + path: the file; a job reads it with `passCommand = "cat <path>"`
    + nbytes: random bytes in the passphrase

    **Example:** ``pyinfra -y INVENTORY tasks.passphrase.generate --limit clients``, then keep a copy of
    each host's passphrase where you keep secrets (or have them escrowed): the repo is unreadable without it.
    """
    if not path.startswith("/"):
        raise HostError(f"{host.name}: tasks.passphrase.generate: path must be absolute, got {path!r}")
    current = host.get_fact(File, path=path)
    if current:
        if not current.get("size"):
            raise HostError(f"{host.name}: {path} exists but is empty: not replaced (remove it to make a new one, "
                            "only if no repo was made with it)")
        host.noop(f"{path} exists (kept: a passphrase file is never replaced)")
        return
    if current is False:
        raise HostError(f"{host.name}: {path} exists and is not a file: not replaced")
    yield new_secret_file(path, nbytes)
