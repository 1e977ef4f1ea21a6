"""tests/infra (the operator's testinfra checks) against a real backed-up fleet, run as users run it:
`pytest tests/infra --inventory INVENTORY [--limit HOST]`. It passes on the healthy fleet and fails,
naming the host, once a host key is world-readable or a job is stale.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys

import pytest

from tests.fleet import Fleet
from tests.integration.helpers import PROJECT, operator_borg, pyinfra
from tests.integration.test_borg_fleet import DATA_SETUP, job

pytestmark = pytest.mark.fleet

CLIENTS = ["host01", "host02"]


@pytest.fixture(scope="module")
def setup(_fleet_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infra-checks")
    fleet = Fleet()
    try:
        fleet.up([*CLIENTS, "backup"])
        op_key = tmp / "operator_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(op_key)], check=True)
        passphrases = {name: "pp-" + secrets.token_hex(12) for name in CLIENTS}
        for name in CLIENTS:
            fleet.run(name, f"export PASS={passphrases[name]}\n" + DATA_SETUP)
        fleet.run("host02", "touch /etc/NIXOS && mkdir -p /var/lib/nixos")  # one host looks like NixOS
        host_data = {name: {"borgbackup": {"jobs": {"system": job()}, "operatorIdentity": str(op_key)}} for name in CLIENTS}
        host_data["backup"] = {"borgbackup": {"repos": {}, "operatorKeys": [op_key.with_suffix(".pub").read_text().strip()]}}
        inventory = fleet.write_inventory(tmp / "inventory.py", host_data, {"clients": CLIENTS, "servers": ["backup"]})
        env = {"BORG_BASE_DIR": str(tmp / "operator-borg")}
        for deploy in ("deploys/backup_server.py", "deploys/backup.py"):
            run = pyinfra(inventory, deploy, env=env)
            assert run.returncode == 0, run.stdout
        (tmp / "empty_known_hosts").write_text("")
        unknown_key = fleet.write_inventory(tmp / "unpinned.py", {**host_data, "host01": {
            **host_data["host01"], "ssh_known_hosts_file": str(tmp / "empty_known_hosts")}})
        yield {"fleet": fleet, "inventory": inventory, "unpinned": unknown_key, "op_key": op_key, "pass": passphrases,
               "env": env}
    finally:
        fleet.down()


def start_checks(setup, *args, inventory=None) -> subprocess.Popen:
    """`pytest tests/infra --inventory INVENTORY ARGS`, from the project root, as a user runs it."""
    argv = [sys.executable, "-m", "pytest", "tests/infra", "-p", "no:cacheprovider",
            "--inventory", str(inventory or setup["inventory"]), *args]
    return subprocess.Popen(argv, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, _ = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout)


def summary(run) -> str:
    """pytest's last line without its `=` padding: `13 passed, 2 skipped in 4.21s`."""
    return run.stdout.strip().splitlines()[-1].strip("= ")


@pytest.fixture(scope="module")
def runs(setup):
    """The checks on the healthy fleet, then after breaking host01 (a world-readable host key) and host02
    (its only archive replaced by one from 2020, its check record gone); runs of a phase go at once."""
    healthy = {"all": start_checks(setup, "-v"), "unknown": start_checks(setup, "-q", "--limit", "nosuchhost"),
               "unpinned": start_checks(setup, "-q", "--limit", "host01", inventory=setup["unpinned"])}
    done = {name: finish(process) for name, process in healthy.items()}
    fleet = setup["fleet"]
    # a second host key: sshd serves only ed25519 here, and a 0644 key it serves would stop it accepting anyone
    fleet.run("host01", "ssh-keygen -q -t ecdsa -N '' -f /etc/ssh/ssh_host_ecdsa_key && chmod 0644 /etc/ssh/ssh_host_ecdsa_key")
    listed = operator_borg(setup, "host02", "list", "--short", "{repo}").stdout.split()
    operator_borg(setup, "host02", "delete", *(f"{{repo}}::{name}" for name in listed))  # the operator's key may delete
    operator_borg(setup, "host02", "create", "--timestamp", "2020-01-01T00:00:00",
                  "{repo}::host02-system-2020-01-01T00:00:00", str(PROJECT / "README.md"))
    fleet.run("host02", "rm /var/lib/pyinfra-backup/jobs/system/last-check-ok")
    broken = {"host01": start_checks(setup, "-v", "--limit", "host01"), "clients": start_checks(setup, "-q", "--limit", "clients")}
    done.update({name: finish(process) for name, process in broken.items()})
    return done


def test_a_healthy_backed_up_fleet_passes(runs):
    run = runs["all"]
    assert run.returncode == 0, run.stdout
    # per host: machine-id, host keys, NixOS uid map (skipped off NixOS); per job: fresh, repo readable, check age
    assert re.match(r"13 passed, 2 skipped in ", summary(run)), run.stdout
    for item in ("test_backup_is_fresh[host01:system]", "test_repo_is_reachable[host02:system]",
                 "test_last_check_is_recent[host02:system]", "test_nixos_uid_map_is_present[host02]",
                 "test_ssh_host_keys_are_present_and_private[backup]"):
        assert f"{item} PASSED" in run.stdout, run.stdout


def test_a_world_readable_host_key_fails_naming_the_host_and_limit_selects_it(runs):
    run = runs["host01"]
    assert run.returncode == 1, run.stdout
    assert "host01: /etc/ssh/ssh_host_ecdsa_key is root 0644 (expected root 0600)" in run.stdout, run.stdout
    assert "FAILED tests/infra/test_identity.py::test_ssh_host_keys_are_present_and_private[host01]" in run.stdout
    assert re.match(r"1 failed, 4 passed, 1 skipped in ", summary(run)) and "host02" not in run.stdout, run.stdout


def test_a_stale_job_and_a_missing_check_fail_naming_the_host(runs):
    run = runs["clients"]
    assert run.returncode == 1, run.stdout
    assert re.search(r"host02: job system: stale: last archive host02-system-2020-01-01T00:00:00 \(\d+d\d\dh old\)",
                     run.stdout), run.stdout
    assert "host02: job system: no successful borg check recorded on the host" in run.stdout, run.stdout
    assert "FAILED tests/infra/test_backups.py::test_backup_is_fresh[host02:system]" in run.stdout, run.stdout
    assert re.match(r"3 failed, 8 passed, 1 skipped in ", summary(run)), run.stdout  # host01's key too


def test_a_limit_matching_no_host_is_an_error(runs):
    run = runs["unknown"]
    assert run.returncode != 0 and "--limit nosuchhost: no host or group of the inventory matches" in run.stdout, run.stdout


def test_a_host_key_missing_from_the_inventory_s_known_hosts_is_refused(runs):
    run = runs["unpinned"]
    assert run.returncode == 1, run.stdout
    assert re.search(r"Server '[0-9.]+' not found in known_hosts", run.stdout), run.stdout
    assert re.match(r"6 failed in ", summary(run)), run.stdout  # every check of host01, none of them connected
