"""Host identity (system state) on real fleet hosts: state archives, their age-encrypted copies, restore.

One fleet of its own (a repo server and two clients): the tests rotate and wipe SSH host keys, so the
session fleet's pins must not depend on them. Pyinfra reaches the clients through this module's own
known_hosts copy (the operator's pins), updated where an operator would (a rotated or reinstalled
host); the fleet's own known_hosts keeps the keys the hosts started with. The tests run in file order.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time

import pytest

from tests.fleet import Fleet
from tests.integration.helpers import in_host, operator_borg, pyinfra

pytestmark = pytest.mark.fleet

CLIENTS = ["host01", "host02"]
UNREADABLE = "/proc/sys/net/ipv4/route/flush"  # mode 0200 in procfs: not readable even by root
SETUP = r"""
set -e
mkdir -p /srv/data && echo "data of $(hostname)" > /srv/data/hello.txt
umask 077 && printf '%s' "$PASS" > /root/borg-pass && umask 022
mkdir -p /var/lib/nixos /var/lib/bluetooth/AA:BB:CC:DD:EE:FF
echo '{"alice": 1000}' > /var/lib/nixos/uid-map && echo '{"users": 100}' > /var/lib/nixos/gid-map
printf '[General]\nName=%s\n' "$(hostname)" > /var/lib/bluetooth/AA:BB:CC:DD:EE:FF/settings
chmod 0700 /var/lib/bluetooth/AA:BB:CC:DD:EE:FF && chmod 0600 /var/lib/bluetooth/AA:BB:CC:DD:EE:FF/settings
chown 0:113 /var/lib/bluetooth/AA:BB:CC:DD:EE:FF/settings
"""
IDENTITY = ("for f in /etc/machine-id /etc/ssh/ssh_host_* $(find /var/lib/nixos /var/lib/bluetooth | sort); do "
            "stat -c '%n %u %g %a %F' \"$f\"; [ -f \"$f\" ] && sha256sum \"$f\"; done; true")
REINSTALL = ("rm -rf /etc/ssh/ssh_host_* /etc/machine-id /var/lib/nixos && "
             "ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && "
             "cat /proc/sys/kernel/random/uuid | tr -d - > /etc/machine-id")


@pytest.fixture(scope="module")
def state_fleet(_fleet_session):
    fleet = Fleet()
    try:
        fleet.up(CLIENTS, group="clients")
        fleet.add("backup", group="servers")
        yield fleet
    finally:
        fleet.down()


@pytest.fixture(scope="module")
def setup(state_fleet, tmp_path_factory):
    import pyrage

    fleet, tmp = state_fleet, tmp_path_factory.mktemp("state-fleet")
    op_key = tmp / "operator_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(op_key)], check=True)
    admin = pyrage.x25519.Identity.generate()
    (tmp / "admin.age").write_text(str(admin) + "\n")
    passphrases = {name: "pp-" + secrets.token_hex(12) for name in CLIENTS}
    for name in CLIENTS:
        fleet.run(name, f"export PASS={passphrases[name]}\n" + SETUP)
    pins = tmp / "known_hosts"  # the operator's pins for the clients
    pins.write_text(fleet.known_hosts_path.read_text())

    def client_data(name, **state):
        job = {"paths": ["/srv/data"], "repo": "borg@backup:.", "startAt": "daily", "prune": {"keep": {"daily": 1}},
               "encryption": {"mode": "repokey-blake2", "passCommand": "cat /root/borg-pass"}}
        return {"borgbackup": {"jobs": {"system": job}, "operatorIdentity": str(op_key), "lockWait": 3},
                "system_state": {"job": "system", "ageRecipients": [str(admin.to_public())],
                                 "ageDir": str(tmp / "recovery"), **state},
                "ssh_known_hosts_file": str(pins)}

    def write_inventory(path, **overrides):
        data = {name: overrides.get(name) or client_data(name) for name in CLIENTS}
        data["backup"] = {"borgbackup": {"repos": {}, "operatorKeys": [op_key.with_suffix(".pub").read_text().strip()]}}
        return fleet.write_inventory(tmp / path, data, {"clients": CLIENTS, "servers": ["backup"]})

    state = {"fleet": fleet, "tmp": tmp, "op_key": op_key, "pass": passphrases, "pins": pins, "admin": admin,
             "env": {"BORG_BASE_DIR": str(tmp / "operator-borg")}, "client_data": client_data,
             "write_inventory": write_inventory, "inventory": write_inventory("inventory.py")}
    server = pyinfra(state["inventory"], "deploys/backup_server.py", env=state["env"])
    assert server.returncode == 0, server.stdout
    started = time.monotonic()
    state["first_run"] = pyinfra(state["inventory"], "deploys/backup.py", env=state["env"])
    state["first_run_seconds"] = time.monotonic() - started
    return state


def pin(setup, name: str) -> None:
    """The operator pins a host's current key (after a rotation or a reinstall, checked out of band)."""
    key = setup["fleet"].run(name, "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub").stdout.strip()
    lines = [line for line in setup["pins"].read_text().splitlines() if not line.startswith(f"{name},")]
    setup["pins"].write_text("\n".join([*lines, f"{name},{setup['fleet'].host(name).address} {key}"]) + "\n")


def archives(setup, client: str) -> tuple[list[str], list[str]]:
    """(state archives, the job's own archives) of the client's repo, oldest first, in one borg call."""
    names = operator_borg(setup, client, "list", "--short", "{repo}").stdout.split()
    return ([n for n in names if n.startswith(f"{client}-system-state-")],
            [n for n in names if re.fullmatch(rf"{client}-system-\d{{4}}-\S+", n)])


def copies(setup, client: str) -> list[str]:
    return sorted(p.name for p in (setup["tmp"] / "recovery" / client).glob("*.tar.age"))


def old_pin_connects(fleet, name: str) -> subprocess.CompletedProcess:
    """OpenSSH with StrictHostKeyChecking=yes against the fleet's own known_hosts (the keys the hosts started with)."""
    return subprocess.run(fleet.ssh_command(name, "true"), capture_output=True, text=True, timeout=30)


def test_first_run_stores_one_state_archive_per_host_and_an_encrypted_copy(setup):
    run = setup["first_run"]
    assert run.returncode == 0, run.stdout
    names = {}
    for client in CLIENTS:
        [name], data = archives(setup, client)
        names[client] = name
        assert re.fullmatch(rf"{client}-system-state-\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d", name)
        assert len(data) == 1  # the job's own archive, apart from the state one
        assert len(copies(setup, client)) == 1
        record = json.loads(setup["fleet"].run(client, "cat /var/lib/pyinfra-backup/jobs/system/last-state.json").stdout)
        assert record["create"]["archive"]["name"] == name and len(record["digest"]) == 64
    items = operator_borg(setup, "host02", "list", "--format", "{mode} {uid} {gid} {path}{NL}", f"{{repo}}::{names['host02']}")
    assert "-rw------- 0 0 etc/ssh/ssh_host_ed25519_key" in items.stdout.splitlines()
    assert "-rw------- 0 113 var/lib/bluetooth/AA:BB:CC:DD:EE:FF/settings" in items.stdout.splitlines()
    assert " etc/machine-id" in items.stdout and "var/lib/nixos/uid-map" in items.stdout
    assert re.search(r"\[host01\] state: stored a state archive of \d+ entries in the repo of job system; "
                     r"not on this host, skipped: /var/lib/NetworkManager, /etc/NetworkManager/system-connections",
                     run.stdout), run.stdout
    print(f"first run (2 clients: init, create, state archive, encrypted copy): {setup['first_run_seconds']:.2f} s")


def test_rerun_with_nothing_changed_stores_none(setup):
    fleet = setup["fleet"]
    before = {name: fleet.exec_count(name) for name in CLIENTS}
    started = time.monotonic()
    run = pyinfra(setup["inventory"], "deploys/backup.py", "-v", env=setup["env"])
    seconds = time.monotonic() - started
    assert run.returncode == 0, run.stdout
    assert "] Success" not in run.stdout and "No changes" in run.stdout
    assert re.search(r"\[host02\] .*state: unchanged since host02-system-state-\S+ \(\d+ entries\)", run.stdout), run.stdout
    for client in CLIENTS:
        assert len(copies(setup, client)) == 1  # nothing changed: no new state archive either (next test)
        # one command for the borg client view, one for the state digest (with the record)
        assert fleet.exec_count(client) - before[client] == 2, run.stdout
    print(f"no-op backup run with system_state: {seconds:.2f} s")


def test_a_rotated_host_key_makes_the_next_run_store_one(setup):
    fleet = setup["fleet"]
    first = archives(setup, "host01")[0]
    fleet.run("host01", "rm -f /etc/ssh/ssh_host_ed25519_key* && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key")
    pin(setup, "host01")
    time.sleep(1)  # archive names have second resolution
    run = pyinfra(setup["inventory"], "deploys/backup.py", env=setup["env"])
    assert run.returncode == 0, run.stdout
    now = archives(setup, "host01")[0]
    assert len(now) == 2 and now[0] == first[0]  # one since the first run, the rerun stored none
    key = fleet.run("host01", "sha256sum < /etc/ssh/ssh_host_ed25519_key").stdout.split()[0]
    stored = operator_borg(setup, "host01", "list", "--format", "{sha256}", f"{{repo}}::{now[1]}",
                           "etc/ssh/ssh_host_ed25519_key").stdout
    assert stored == key
    assert len(archives(setup, "host02")[0]) == 1
    assert len(copies(setup, "host01")) == 2 and len(copies(setup, "host02")) == 1


def test_wiped_identity_is_restored_exactly_and_the_old_pin_connects_again(setup):
    fleet = setup["fleet"]
    before = fleet.run("host02", IDENTITY).stdout
    assert old_pin_connects(fleet, "host02").returncode == 0
    fleet.run("host02", REINSTALL)  # a reinstall: new host key and machine-id, no /var/lib/nixos
    refused = old_pin_connects(fleet, "host02")
    assert refused.returncode == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr
    pin(setup, "host02")  # the operator reaches the reinstalled host
    try:
        run = pyinfra(setup["inventory"], "tasks.state.restore", "--limit", "host02", env=setup["env"])
        assert run.returncode == 0, run.stdout
        assert fleet.run("host02", IDENTITY).stdout == before  # bytes, owner, mode
        assert "-rw------- 0 0" in fleet.run("host02", "stat -c '%A %u %g' /etc/ssh/ssh_host_ed25519_key").stdout
        told = re.search(r"\[host02\] state: restored \d+ of \d+ entries from host02-system-state-\S+ .*", run.stdout)
        assert told and "restart sshd" in told[0] and "before the first switch" in told[0], run.stdout
        # OpenSSH 9.2 loads its host keys for each new connection: no restart needed here
        assert old_pin_connects(fleet, "host02").returncode == 0
        replaced = fleet.run("host02", "ls -d /var/lib/pyinfra-backup/state/replaced-*/etc/ssh/ssh_host_ed25519_key "
                                       "&& ls /var/lib/pyinfra-backup/state").stdout
        assert "staging-" not in replaced  # the extracted copy is gone, what it replaced is kept
    finally:
        pin(setup, "host02")  # the restored key again
    again = pyinfra(setup["inventory"], "tasks.state.restore", "--limit", "host02", "-v", env=setup["env"])
    assert again.returncode == 0 and "state: the live files equal host02-system-state-" in again.stdout, again.stdout


def test_the_encrypted_copy_restores_without_borg(setup):
    fleet = setup["fleet"]
    before = fleet.run("host01", IDENTITY).stdout
    latest = setup["tmp"] / "recovery" / "host01" / copies(setup, "host01")[-1]
    fleet.run("host01", REINSTALL)
    # The documented recovery: age -d -i ADMIN_KEY COPY | tar -xpf - --numeric-owner -C /   (on the host)
    decrypt = subprocess.Popen(["age", "-d", "-i", str(setup["tmp"] / "admin.age"), str(latest)], stdout=subprocess.PIPE)
    untar = subprocess.run(in_host(fleet, "host01", "tar -xpf - --numeric-owner -C /"), stdin=decrypt.stdout,
                           capture_output=True, text=True)
    decrypt.stdout.close()
    assert decrypt.wait() == 0 and untar.returncode == 0, untar.stderr
    assert fleet.run("host01", IDENTITY).stdout == before
    run = pyinfra(setup["inventory"], "deploys/backup.py", "-v", env=setup["env"])  # the rotated key's pin holds
    assert run.returncode == 0 and "state: unchanged since host01-system-state-" in run.stdout, run.stdout


def test_an_unreadable_path_fails_that_host_only_and_changes_nothing(setup):
    fleet = setup["fleet"]
    paths = ["/etc/machine-id", "/etc/ssh/ssh_host_*", UNREADABLE]
    inventory = setup["write_inventory"]("inventory-unreadable.py", host01=setup["client_data"]("host01", paths=paths))
    record = "cat /var/lib/pyinfra-backup/jobs/system/last-state.json"
    before = {c: (*archives(setup, c), copies(setup, c), fleet.run(c, record).stdout) for c in CLIENTS}
    time.sleep(1)
    run = pyinfra(inventory, "deploys/backup.py", "--data", "backup_force=true", env=setup["env"])
    assert run.returncode != 0
    reason = (rf"\[host01\] host01: system_state.paths: cannot read sha256sum: {UNREADABLE}: Permission denied "
              r"\(nothing was stored")
    assert len(re.findall(reason, run.stdout)) == 3, run.stdout  # the state archive, the encrypted copy, the outcome
    assert not re.search(r"\[host02\] .*(cannot|failed)", run.stdout), run.stdout
    after = {c: (*archives(setup, c), copies(setup, c), fleet.run(c, record).stdout) for c in CLIENTS}
    for client in CLIENTS:
        state, data, copied, recorded = before[client]
        assert (after[client][0], after[client][2:]) == (state, (copied, recorded))  # no state archive, copy, record
        # the job's own (forced) backup went on, and its prune (keep.daily=1) left the state archives alone
        assert len(after[client][1]) == 1 and after[client][1] != data


# Inside the host: waits for borg's create of a state archive to start and end, then removes a file, so that
# the tar of the encrypted copy (the next step) misses a file the state fact saw.
VANISH = r"""
import glob, os, sys, time
seen, deadline = False, time.time() + 120
while time.time() < deadline:
    running = False
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            argv = open(path, "rb").read()
        except OSError:
            continue
        running = running or (b"\0create\0" in argv and b"-state-" in argv)
    if running:
        seen = True
    elif seen:
        os.remove(sys.argv[1])
        break
    time.sleep(0.005)
"""


def test_a_tar_that_fails_during_the_encrypted_copy_fails_the_host_and_writes_no_copy(setup):
    fleet = setup["fleet"]
    fleet.run("host02", "echo transient > /srv/vanishing")
    paths = ["/etc/machine-id", "/srv/vanishing"]
    inventory = setup["write_inventory"]("inventory-vanishing.py", host02=setup["client_data"]("host02", paths=paths))
    copied = copies(setup, "host02")
    watcher = subprocess.Popen(in_host(fleet, "host02", f"exec python3 -c '{VANISH}' /srv/vanishing"))
    try:
        run = pyinfra(inventory, "deploys/backup.py", "-v", "--limit", "host02", env=setup["env"])
    finally:
        watcher.wait(timeout=150)
    assert fleet.run("host02", "test -e /srv/vanishing", check=False).returncode != 0  # the watcher did remove it
    assert "state: stored a state archive" in run.stdout, run.stdout  # ...after the state archive was stored
    assert run.returncode != 0, run.stdout
    assert re.search(r"\[host02\] host02: state: encrypted copy failed: tar of the state files failed: "
                     r".*srv/vanishing: Cannot stat", run.stdout), run.stdout
    assert copies(setup, "host02") == copied  # no copy of what tar did not read, named as if it held it
