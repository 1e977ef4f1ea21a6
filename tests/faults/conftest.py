"""The fault-injection suite's shared setup (tests/faults, issue 8).

One fleet of its own for the whole package (host01..host05 + the repo server `backup`; the session
`fleet` belongs to tests/integration), enrolled by one real backup run as the README says
(backup_server.py, then backup.py). Every scenario ends with `Ledger.assert_kept`: `borg check`
clean on every repo involved, and no archive, file or secret lost. Processes' argv on the whole
machine (every fleet host's processes are visible from here) is sampled during every pyinfra run
of the suite; scenario 11 asserts that no secret ever appeared in it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fleet import Fleet
from tests.integration.helpers import DATA_SETUP, TREE, borg_job, operator_borg, pyinfra

CLIENTS = ["host01", "host02", "host03", "host04", "host05"]
SERVER = "backup"
# Files whose loss would lose a backup: the passphrase, the host's backup key, its pinned server key.
CLIENT_SECRETS = ("/root/borg-pass", "/var/lib/pyinfra-backup/ssh/id_ed25519", "/var/lib/pyinfra-backup/ssh/known_hosts")


def job(**extra) -> dict:
    return borg_job(SERVER, **extra)


class Faults:
    """The suite's fleet, inventory and operator, and what a scenario needs to break and check them."""

    def __init__(self, fleet: Fleet, tmp: Path):
        self.fleet, self.tmp = fleet, tmp
        self.op_key = tmp / "operator_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.op_key)], check=True)
        self.passphrases = {name: "pp-" + secrets.token_hex(12) for name in CLIENTS}
        self.env = {"BORG_BASE_DIR": str(tmp / "operator-borg"), "PYINFRA_BACKUP_STATE": str(tmp / "operator-state")}
        self.jobs = {name: {"system": job()} for name in CLIENTS}
        self.server_data = {"borgbackup": {"repos": {}, "operatorKeys": [self.op_key.with_suffix(".pub").read_text().strip()]}}
        self.argv_samples = ArgvSampler()
        self.outputs: list[str] = []  # the output of every pyinfra run of the suite
        self.inventory = self.write_inventory("inventory.py")

    # The shape operator_borg() (tests/integration/helpers.py) reads.
    def __getitem__(self, key):
        return {"fleet": self.fleet, "op_key": self.op_key, "env": self.env, "pass": self.passphrases}[key]

    def client_data(self, name: str, jobs: dict | None = None) -> dict:
        return {"borgbackup": {"jobs": jobs or self.jobs[name], "operatorIdentity": str(self.op_key), "lockWait": 5}}

    def write_inventory(self, filename: str, **overrides: dict) -> Path:
        """The suite's inventory, with some hosts' data replaced (`host01={...}`)."""
        data = {name: self.client_data(name) for name in CLIENTS} | {SERVER: self.server_data} | overrides
        return self.fleet.write_inventory(self.tmp / filename, data, {"clients": CLIENTS, "servers": [SERVER]})

    def pyinfra(self, *args: str, inventory: Path | None = None, env: dict | None = None,
                **kwargs) -> subprocess.CompletedProcess:
        """A pyinfra run of the suite (argv of every process sampled meanwhile); `env` on top of the suite's."""
        with self.argv_samples.sampling():
            run = pyinfra(inventory or self.inventory, *args, env={**self.env, **(env or {})}, **kwargs)
        self.outputs.append(run.stdout)
        return run

    def secrets(self) -> dict[str, str]:
        """Every secret the suite's runs handle, by what it is: none may show in argv, output or logs.
        (Offsite copies' rclone credentials join here.)"""
        return {f"{name}'s borg passphrase": passphrase for name, passphrase in self.passphrases.items()}

    def backup(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.pyinfra("deploys/backup.py", *args, **kwargs)

    def borg(self, client: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The operator's borg on the client's repo (`{repo}`), full access."""
        return operator_borg(self, client, *args, check=check)

    def archives(self, client: str, checkpoints: bool = False) -> list[str]:
        extra = ["--consider-checkpoints"] if checkpoints else []
        listing = json.loads(self.borg(client, "list", "--json", *extra, "{repo}").stdout)
        return [archive["name"] for archive in listing["archives"]]

    def repo_dir(self, client: str) -> str:
        return f"/var/lib/borgbackup/{client}"

    def repo_files(self, client: str) -> list[str]:
        """Every file of the client's repo on the server (segments, index, hints, locks)."""
        out = self.fleet.run(SERVER, f"cd {self.repo_dir(client)} && find . -type f | sort")
        return out.stdout.split()

    def freshness(self, inventory: Path | None = None) -> dict:
        """`pyinfra INVENTORY fact facts.borg.BackupFreshness`, parsed: {host: {job: entry}}."""
        run = self.pyinfra("fact", "facts.borg.BackupFreshness", inventory=inventory, yes=False)
        assert "{" in run.stdout, run.stdout
        return json.loads(run.stdout[run.stdout.index("{"):run.stdout.rindex("}") + 1])

    def ledger(self, *clients: str) -> Ledger:
        return Ledger(self, clients)


class Ledger:
    """What must survive a scenario, taken before it: each client's archives, its data and secrets.

        kept = faults.ledger("host01")
        ...  # the fault, the runs
        kept.assert_kept()   # borg check clean on every repo involved, nothing lost
    """

    def __init__(self, faults: Faults, clients: tuple[str, ...]):
        self.faults, self.clients = faults, clients
        self.archives = dict(zip(clients, _each(faults.archives, clients)))
        self.files = dict(zip(clients, _each(self._files, clients)))

    def _files(self, client: str) -> str:
        paths = " ".join(CLIENT_SECRETS)
        return self.faults.fleet.run(client, TREE.format("/srv/data") + f"; sha256sum {paths}").stdout

    def assert_kept(self) -> None:
        _each(self._assert_kept, self.clients)

    def _assert_kept(self, client: str) -> None:
        check = self.faults.borg(client, "check", "{repo}", check=False)
        assert check.returncode == 0, f"{client}: borg check: {check.stderr}"
        lost = set(self.archives[client]) - set(self.faults.archives(client))
        assert not lost, f"{client}: archives lost: {sorted(lost)}"
        assert self._files(client) == self.files[client], f"{client}: data or secrets changed"
        locks = [name for name in self.faults.repo_files(client) if "lock" in name]
        assert not locks, f"{client}: the repo is still locked: {locks}"


def _each(func, items) -> list:
    """func(item) for every item, in parallel (each waits on borg over ssh), results in order."""
    with ThreadPoolExecutor(max_workers=len(items) or 1) as pool:
        return list(pool.map(func, items))


class ArgvSampler:
    """Every process's argv on this machine, sampled every 20 ms while a run goes on (fleet hosts'
    processes are visible from the machine's /proc: no remote command needed)."""

    def __init__(self):
        self.seen: set[str] = set()

    @contextmanager
    def sampling(self):
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                for pid in os.listdir("/proc"):
                    if pid.isdigit():
                        try:
                            self.seen.add(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                        except OSError:
                            pass
                stop.wait(0.02)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


@pytest.fixture(scope="package")
def faults(_fleet_session, tmp_path_factory):
    """The suite's own fleet, every client enrolled and backed up once."""
    fleet = Fleet()
    try:
        fleet.up([*CLIENTS, SERVER])
        made = Faults(fleet, tmp_path_factory.mktemp("faults"))
        for name in CLIENTS:
            fleet.run(name, f"export PASS={made.passphrases[name]}\n" + DATA_SETUP)
        server = made.pyinfra("deploys/backup_server.py")
        assert server.returncode == 0, server.stdout
        first = made.backup()
        assert first.returncode == 0, first.stdout
        yield made
    finally:
        fleet.down()


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")

