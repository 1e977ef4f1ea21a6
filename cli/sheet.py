"""The recovery sheet, for printing and the safe (pyinfra_backup/sheet.py says what is on it).

    python -m cli.sheet INVENTORY                                   # ids, key digests, recipients, commands
    python -m cli.sheet INVENTORY --paper --identity ~/escrow.txt   # and each repo's key in borg's paper format

Reads the inventory's host data and the escrow records on this machine ($PYINFRA_BACKUP_STATE/escrow); connects
to no host. `--paper` decrypts each key export in memory with the identities given (or
`borgbackup.escrow.identities`) and prints it as `borg key export --paper` would.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from pyinfra_backup import escrow_store
from pyinfra_backup.escrow import EscrowError
from pyinfra_backup.sheet import Row, paper_key, render, yubikey_serials


def _hosts(inventory: str) -> list[tuple[str, dict]]:
    from pyinfra_backup.report import load_state  # the inventory as `pyinfra INVENTORY` loads it (no connection)

    return [(host.name, host.data.dict()) for host in load_state(inventory).inventory]


def _serials(hosts: list[tuple[str, dict]], extra: list[str]) -> dict[str, list[str]]:
    """YubiKey serials in the identity files the inventory names (escrow, agenix) or given on the command line."""
    paths = list(extra)
    for _, data in hosts:
        paths += escrow_store.identities_of(data) + list((data.get("agenix") or {}).get("identities") or ())
    found = {}
    for path in dict.fromkeys(paths):
        try:
            serials = yubikey_serials(Path(os.path.expanduser(path)).read_text(errors="replace"))
        except OSError:
            continue
        if serials:
            found[path] = serials
    return found


def sheet(inventory: str, paper: bool, identities: list[str]) -> str:
    hosts = _hosts(inventory)
    rows, recipients, papers = [], {}, {}
    for name, data in hosts:
        for recipient in (r.text for r in escrow_store.recipients_of(data)):
            recipients.setdefault(recipient, []).append(name)
        for job, spec in sorted(((data.get("borgbackup") or {}).get("jobs") or {}).items()):
            kept = escrow_store.load(name, job)
            rows.append(Row(name, job, spec.get("repo", "?"), (spec.get("encryption") or {}).get("mode", "?"), kept))
            if paper and kept:
                export = escrow_store.decrypt(name, job, "key.age", identities or escrow_store.identities_of(data))
                papers[(name, job)] = paper_key(export.decode())
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return render(inventory, rows, recipients, str(escrow_store.state_dir() / "escrow"),
                  _serials(hosts, identities), papers, now)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli.sheet", description=__doc__.split("\n\n")[0])
    parser.add_argument("inventory", help="the pyinfra inventory of the fleet")
    parser.add_argument("--paper", action="store_true", help="each repo's key in borg's paper format (decrypts the escrow)")
    parser.add_argument("--identity", action="append", default=[], help="an identity of the escrow recipients (repeatable)")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(sheet(args.inventory, args.paper, args.identity))
    except EscrowError as error:
        print(f"recovery sheet: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
