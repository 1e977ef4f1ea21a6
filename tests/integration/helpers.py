"""Running pyinfra and the operator's borg against the test fleet, as a user would."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def pyinfra(inventory, *args: str, env: dict | None = None, yes: bool = True, timeout: int = 300):
    """`pyinfra [-y] INVENTORY ARGS...` from the project root; stdout and stderr together in `.stdout`."""
    argv = [str(PROJECT / ".venv/bin/pyinfra"), *(["-y"] if yes else []), str(inventory), *args]
    return subprocess.run(
        argv, cwd=PROJECT, env={**os.environ, **(env or {})}, timeout=timeout,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def operator_borg(setup: dict, client: str, *args: str, check: bool = True):
    """borg on the operator's machine with the operator key, `{repo}` standing for the client's repo."""
    fleet = setup["fleet"]
    repo = f"ssh://borg@{fleet.host('backup').address}/var/lib/borgbackup/{client}"
    rsh = (f"ssh -i {setup['op_key']} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes "
           f"-o UserKnownHostsFile={fleet.known_hosts_path}")
    env = {**os.environ, **setup["env"], "BORG_RSH": rsh, "BORG_PASSPHRASE": setup["pass"][client], "TZ": "UTC"}
    argv = ["borg", *[arg.replace("{repo}", repo) for arg in args]]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=check)


def in_host(fleet, name: str, cmd: str) -> list[str]:
    """argv that runs `cmd` inside a fleet host, for a background process (fleet.run waits)."""
    pid = str(fleet.host(name).pid)
    return ["nsenter", "-t", pid, "--net", "--mount", "--uts", "--pid", "--root", "--wd", "--", "/bin/sh", "-c", cmd]
