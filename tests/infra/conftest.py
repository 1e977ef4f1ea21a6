"""testinfra checks of the hosts of a pyinfra inventory, for the operator's own CI:

    .venv/bin/pytest tests/infra --inventory INVENTORY [--limit HOST_OR_GROUP]

The inventory is loaded (and validated) as `pyinfra INVENTORY` loads it; each host becomes a
testinfra host over SSH with the inventory's own connection data (ssh_hostname, ssh_port, ssh_user,
ssh_key, ssh_known_hosts_file, ssh_strict_host_key_checking; `@local` runs locally). Tests are
parametrised by host (`infra_host`: every selected host) and by job (`infra_job`: each job of a
selected host, as `(host, job)`; `infra_checked_job`: those with checks.frequency); a failure names
the host and the job.
"""

from __future__ import annotations

import functools
import os

import paramiko
import pytest
import testinfra.host
from testinfra.backend.local import LocalBackend
from testinfra.backend.paramiko import IgnorePolicy, ParamikoBackend

from pyinfra_backup.fleet_checks import SshConnection, select_hosts, ssh_connection


class InventoryBackend(ParamikoBackend):
    """testinfra's paramiko backend, with pyinfra's host key rules (testinfra's own accepts any key):
    the known_hosts file of the inventory, checked as `ssh_strict_host_key_checking` says."""

    def __init__(self, connection: SshConnection):
        super().__init__(connection.hostspec, ssh_config=connection.ssh_config, ssh_identity_file=connection.key)
        self.connection = connection

    @functools.cached_property
    def client(self) -> paramiko.SSHClient:
        c = self.connection
        client = paramiko.SSHClient()
        cfg = {"hostname": c.hostname, "port": c.port, "timeout": self.timeout}
        if c.ssh_config:
            with open(c.ssh_config) as f:
                config = paramiko.SSHConfig()
                config.parse(f)
            self._load_ssh_config(client, cfg, config, os.path.dirname(c.ssh_config))
            cfg["hostname"], cfg["port"] = c.hostname, c.port  # the inventory's own values win
        if os.path.exists(c.known_hosts):
            client.load_host_keys(c.known_hosts)
        if c.strict in ("yes", "ask"):
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        elif c.strict in ("no", "off"):
            client.set_missing_host_key_policy(IgnorePolicy())
        else:  # accept-new: as pyinfra, a new host's key is added; a changed key is still refused
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        cfg.update({key: value for key, value in (("username", c.user), ("key_filename", c.key), ("password", c.password))
                    if value is not None})
        client.connect(**cfg, allow_agent=c.allow_agent, look_for_keys=c.look_for_keys)
        return client


class InventoryHosts:
    """The loaded inventory, the selected hosts and one testinfra host each (made when first used)."""

    def __init__(self, inventory_path: str, limits: list[str]):
        from pyinfra_backup.report import load_state
        from pyinfra_backup.validate import inventory_errors

        self.state = load_state(inventory_path)
        self.inventory = self.state.inventory
        errors = inventory_errors(self.inventory)
        if errors:
            raise pytest.UsageError(f"--inventory {inventory_path}: invalid host data:\n" + "\n".join(errors))
        names = [host.name for host in self.inventory]
        groups = {name: [host.name for host in hosts] for name, hosts in self.inventory.groups.items()}
        try:
            self.hosts = select_hosts(names, groups, limits)
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None
        self._testinfra: dict[str, testinfra.host.Host] = {}
        self._readings: dict = {}

    def pyinfra_host(self, name: str):
        return self.inventory.get_host(name)

    def jobs(self, checked_only: bool = False) -> list[tuple[str, str]]:
        """(host, job) of each job of the selected hosts (only those with checks.frequency)."""
        return [(name, job) for name in self.hosts for job, data in self.job_data(name).items()
                if not checked_only or data.check_frequency]

    def job_data(self, name: str) -> dict:
        """The host's jobs by name (pyinfra_backup.borg.Job)."""
        from facts.borg import host_plan

        return {planned.job.name: planned.job for planned in host_plan(self.pyinfra_host(name), self.inventory)}

    def testinfra_host(self, name: str) -> testinfra.host.Host:
        if name not in self._testinfra:
            host = self.pyinfra_host(name)
            if host.connector_cls.__name__ == "LocalConnector":
                backend = LocalBackend("local://")
            elif host.connector_cls.__name__ == "SSHConnector":
                backend = InventoryBackend(ssh_connection(name, host.data.dict()))
            else:
                raise pytest.UsageError(f"{name}: tests/infra speaks SSH and @local, not {host.connector_cls.__name__}")
            self._testinfra[name] = testinfra.host.Host(backend)
        return self._testinfra[name]

    def backups(self, name: str):
        """The host's backups, read once per session (see `read_backups`)."""
        if name not in self._readings:
            self._readings[name] = read_backups(self, name)
        return self._readings[name]


def read_backups(fleet: InventoryHosts, name: str):
    """Run the `BackupFreshness` fact's one command on the host over testinfra, and parse the output
    with the facts that own each part: that script is `BorgClient`'s sections (the job records) plus
    `BorgRepos`' (the listings), so each fact's `process` reads its own sections of the one output."""
    from pyinfra.context import ctx_host, ctx_state

    from facts.borg import BackupFreshness, BorgClient, BorgRepos

    freshness, client, repos = BackupFreshness(), BorgClient(), BorgRepos()
    with ctx_state.use(fleet.state), ctx_host.use(fleet.pyinfra_host(name)):
        command = freshness.command()
    client.command(freshness.plan)  # binds each parser to the host's plan; their commands are parts of `command`
    repos.command(freshness.plan)
    result = fleet.testinfra_host(name).run(command)
    assert result.rc == 0, f"{name}: the BackupFreshness command failed (exit {result.rc}): {result.stderr.strip()}"
    output = result.stdout.splitlines()
    return {"freshness": freshness.process(output), "listings": repos.process(output),
            "records": client.process(output).records}


@pytest.fixture(scope="session")
def fleet(request) -> InventoryHosts:
    """The inventory's hosts (see `InventoryHosts`): `fleet.testinfra_host(name)`, `fleet.backups(name)`."""
    return _fleet(request.config)


def _fleet(config) -> InventoryHosts:
    if not hasattr(config, "_pbk_infra_fleet"):
        config._pbk_infra_fleet = InventoryHosts(config.getoption("inventory"), config.getoption("limit"))
    return config._pbk_infra_fleet


def pytest_generate_tests(metafunc):
    if "infra_host" in metafunc.fixturenames:
        hosts = _fleet(metafunc.config).hosts
        metafunc.parametrize("infra_host", hosts, ids=hosts)
    for name, checked_only in (("infra_job", False), ("infra_checked_job", True)):
        if name in metafunc.fixturenames:
            jobs = _fleet(metafunc.config).jobs(checked_only)
            metafunc.parametrize(name, jobs, ids=[f"{host}:{job}" for host, job in jobs])
