"""The recovery sheet: what to print and keep in the safe beside the escrow identity (cli/sheet.py prints it).

Every repo's id and key digest (as escrowed), the escrow recipients, where the escrow lives, the YubiKey
serials named by the identity files of the inventory, the commands of the emergency path, and on request
each repo's key in borg's own paper format (`borg key export --paper`, typed back with `borg key import --paper`):

    >>> paper_key("BORG_KEY " + "ab" * 32 + "\\nAAEC\\n").splitlines()[2:4]
    ['BORG PAPER KEY v1', 'id: 1 / ababab ababab ababab / ae4b32 80e56e - 84']
"""

from __future__ import annotations

import hashlib
import re
from binascii import a2b_base64
from dataclasses import dataclass

from pyinfra_backup.escrow import Kept, repo_id_of


def _truncated(data: bytes, count: int) -> str:
    return hashlib.sha256(data).hexdigest()[:count]


def _grouped(text: str) -> str:
    return " ".join(text[i:i + 6] for i in range(0, len(text), 6))


def paper_key(export: str) -> str:
    """`borg key export --paper` of a key export, byte for byte as borg 1.2 writes it (crypto/keymanager.py)."""
    binary = a2b_base64("".join(export.split("\n")[1:]))
    repo_id = repo_id_of(export)[:18]
    lines = (len(binary) + 17) // 18
    complete = _truncated(binary, 12)
    out = ["To restore key use borg key import --paper /path/to/repo", "", "BORG PAPER KEY v1",
           f"id: {lines:d} / {_grouped(repo_id)} / {_grouped(complete)} - "
           f"{_truncated(f'{lines}/{repo_id}/{complete}'.encode('ascii'), 2)}"]
    for index in range(lines):
        chunk = binary[18 * index:18 * index + 18]
        out.append(f"{index + 1:2d}: {_grouped(chunk.hex())} - {_truncated((index + 1).to_bytes(2, 'big') + chunk, 2)}")
    return "\n".join(out) + "\n"


SERIAL = re.compile(r"#\s*Serial:\s*(\d+)(?:,\s*Slot:\s*(\d+))?")


def yubikey_serials(identity_text: str) -> list[str]:
    """`serial (slot N)` of every age-plugin-yubikey identity in an identity file (its `# Serial: N, Slot: M` comments)."""
    return [f"{m[1]}" + (f" (slot {m[2]})" if m[2] else "") for m in SERIAL.finditer(identity_text)]


@dataclass
class Row:
    host: str
    job: str
    repo: str
    mode: str
    kept: Kept | None


def emergency_commands(inventory: str) -> list[str]:
    return [
        "# 1. the escrow identity (age key from the safe, or the YubiKey) on this machine, named for the recovery:",
        "#    borgbackup.escrow.identities = [\"/path/to/escrow-identity\"] in the recovery inventory's group data",
        "# 2. every host back: identity, escrowed key imported, data relayed with the escrowed passphrase",
        f"pyinfra -y {inventory} deploys/recover.py --limit HOST",
        "# 3. new age keys in secrets.nix (a new operator key, the hosts' keys), then every agenix secret rekeyed",
        "pyinfra -y @local deploys/rekey.py",
    ]


def render(inventory: str, rows: list[Row], recipients: dict[str, list[str]], escrow_dir: str,
           serials: dict[str, list[str]], papers: dict[tuple[str, str], str], now: str) -> str:
    """The sheet as text. `recipients`: recipient -> hosts; `serials`: identity file -> YubiKey serials;
    `papers`: (host, job) -> paper key."""
    out = [f"pyinfra-backup recovery sheet: {inventory}, {now}", "",
           f"Escrow: {escrow_dir}/<host>/<job>.key.age, .pass.age (age-encrypted), .json (repo id, key digest)", "",
           "Escrow recipients:"]
    out += [f"  {recipient}  ({', '.join(hosts)})" for recipient, hosts in recipients.items()] or ["  none"]
    out += ["", "YubiKeys named by identity files of the inventory:"]
    out += [f"  serial {serial}  ({path})" for path, found in serials.items() for serial in found] or ["  none"]
    out += ["", "Repos:", f"  {'host':<12} {'job':<10} {'mode':<16} {'repo id':<16} {'key digest':<16} escrowed"]
    for row in rows:
        kept = row.kept
        escrowed = (f"{kept.time}{' + passphrase' if kept.passphrase else ''}" if kept else
                    "NO ESCROW" if row.mode != "none" else "(unencrypted)")
        out.append(f"  {row.host:<12} {row.job:<10} {row.mode:<16} {(kept.repo_id[:16] if kept else '-'):<16} "
                   f"{(kept.key_digest[:16] if kept else '-'):<16} {escrowed}")
        out.append(f"  {'':<12} {row.repo}")
    out += ["", "Emergency path (nothing left but the escrow identity):", *(f"  {line}" for line in emergency_commands(inventory))]
    for (host, job), paper in papers.items():
        out += ["", f"Paper key of {host} job {job}:", paper.rstrip("\n")]
    return "\n".join(out) + "\n"
