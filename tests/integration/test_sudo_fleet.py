"""Every deploy over a non-root login with sudo, from a controller that is not root either.

Each fleet host gets a user `ops` (the fleet's controller key in its authorized_keys, passwordless sudo in
/etc/sudoers.d/ops); the inventory logs in as `ops` with `_sudo: True` (a copy without it is run with
`pyinfra --sudo`). The controller side runs as the normal user `pbk-op` (uid 4242, known only inside a private
mount namespace whose /etc/passwd and /etc/group list it: nothing is added to this machine), with a home of its
own holding the fleet's key: no path under /root or /var/lib of the controller is needed. backup_server, backup
(twice: the second changes nothing; then with `--sudo`), verify, the fleet report and recover (`--limit` one
client) run that way; the results are checked on the hosts. A run that forgets sudo changes nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pyrage
import pytest

from tests.fleet import Fleet
from tests.integration.helpers import DATA_SETUP, PROJECT, borg_job, tree

pytestmark = pytest.mark.fleet

CLIENTS, SERVER = ["host01", "host02"], "backup"
OPERATOR, UID = "pbk-op", 4242
LOGIN = r"""
set -e
useradd -m -s /bin/bash ops && usermod -p '*' ops   # '*': no password, yet not locked (sshd without PAM)
install -d -m 0700 -o ops -g ops /home/ops/.ssh
printf '%s\n' "$KEY" > /home/ops/.ssh/authorized_keys
chown ops:ops /home/ops/.ssh/authorized_keys && chmod 0600 /home/ops/.ssh/authorized_keys
printf 'ops ALL=(ALL) NOPASSWD: ALL\n' > /etc/sudoers.d/ops && chmod 0440 /etc/sudoers.d/ops
"""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def as_operator(home: Path, etc: Path, *argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`argv` run by `pbk-op` (HOME=home, cwd=home, a clean environment) in a private mount namespace whose
    /etc/passwd and /etc/group (from `etc`) know that user."""
    command = shlex.join(argv)
    enter = (f"mount --make-rprivate / && mount --bind {etc / 'passwd'} /etc/passwd && "
             f"mount --bind {etc / 'group'} /etc/group && cd {shlex.quote(str(home))} && "
             f"exec runuser -u {OPERATOR} -- env -i HOME={shlex.quote(str(home))} PATH={PATH} LANG=C.UTF-8 "
             f"USER={OPERATOR} LOGNAME={OPERATOR} TERM=dumb {command}")
    return subprocess.run(["unshare", "--mount", "--", "sh", "-c", enter], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sudo_fleet(_fleet_session, tmp_path_factory):
    etc = tmp_path_factory.mktemp("sudo-etc")
    (etc / "passwd").write_text(Path("/etc/passwd").read_text()
                                + f"{OPERATOR}:x:{UID}:{UID}:pyinfra-backup operator:/nonexistent:/bin/sh\n")
    (etc / "group").write_text(Path("/etc/group").read_text() + f"{OPERATOR}:x:{UID}:\n")
    home = Path(tempfile.mkdtemp(prefix="pbk-op-home-", dir="/tmp"))  # a pytest tmp dir is root's (0700)
    try:
        with Fleet() as fleet:
            fleet.up(CLIENTS + [SERVER])
            yield _prepared(fleet, home, etc)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _prepared(fleet: Fleet, home: Path, etc: Path) -> dict:
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    shutil.copy(fleet.key_path, ssh / "fleet")  # the fleet's controller key, now the operator's
    shutil.copy(fleet.known_hosts_path, ssh / "known_hosts")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "id_ed25519")], check=True)
    passes = {}
    for name in CLIENTS + [SERVER]:
        fleet.run(name, f"KEY={shlex.quote(fleet.controller_public_key)}\n{LOGIN}")
    for client in CLIENTS:
        passes[client] = f"pp-sudo-{client}-" + os.urandom(8).hex()
        fleet.run(client, f"PASS={shlex.quote(passes[client])}\n{DATA_SETUP}")
    # the fleet's ssh_config lives in root's state dir: the operator has its own files
    login = {"ssh_user": "ops", "_sudo": True, "ssh_key": str(ssh / "fleet"),
             "ssh_known_hosts_file": str(ssh / "known_hosts"), "ssh_config_file": "/dev/null"}
    job = borg_job(prune={"keep": {"daily": 7}})  # prune: the operator's borg, the passCommand run over sudo
    identity = pyrage.x25519.Identity.generate()  # the escrow: the key export and passCommand read over sudo
    client = {**login, "borgbackup": {"jobs": {"system": job}, "escrow": {"recipients": [str(identity.to_public())]}},
              "system_state": {"job": "system"},
              "recover_checks": ["test -s /root/borg-pass"]}  # as root: /root is 0700
    server = {**login, "borgbackup": {"repos": {}, "operatorKeys": [(ssh / "id_ed25519.pub").read_text().strip()]}}
    fleet.write_inventory(home / "inventory.py", {**{c: client for c in CLIENTS}, SERVER: server})
    # the same fleet for `pyinfra --sudo`: no _sudo in the data
    flag = {name: {key: value for key, value in data.items() if key != "_sudo"}
            for name, data in {**{c: client for c in CLIENTS}, SERVER: server}.items()}
    fleet.write_inventory(home / "inventory-flag.py", flag)
    subprocess.run(["chown", "-R", f"{UID}:{UID}", str(home)], check=True)
    home.chmod(0o700)
    return {"fleet": fleet, "home": home, "etc": etc, "passes": passes, "runs": {}, "escrow_identity": identity}


def run(setup: dict, deploy: str, *args: str, inventory: str = "inventory.py") -> subprocess.CompletedProcess:
    """`pyinfra -y INVENTORY DEPLOY ARGS...` as the operator."""
    return as_operator(setup["home"], setup["etc"], str(PROJECT / ".venv/bin/pyinfra"), "-y", inventory,
                       str(PROJECT / deploy), *args)


@pytest.fixture(scope="module")
def backed_up(sudo_fleet):
    runs = sudo_fleet["runs"]
    listing = dict.fromkeys(CLIENTS + [SERVER], "find /var/lib/borgbackup /var/lib/pyinfra-backup 2>/dev/null | sort")
    before = {name: sudo_fleet["fleet"].run(name, command, check=False).stdout for name, command in listing.items()}
    runs["no sudo"] = run(sudo_fleet, "deploys/backup.py", inventory="inventory-flag.py")  # forgot --sudo
    sudo_fleet["untouched"] = {name: (before[name], sudo_fleet["fleet"].run(name, command, check=False).stdout)
                               for name, command in listing.items()}
    runs["server"] = run(sudo_fleet, "deploys/backup_server.py")
    runs["backup"] = run(sudo_fleet, "deploys/backup.py")
    runs["again"] = run(sudo_fleet, "deploys/backup.py")
    runs["flag"] = run(sudo_fleet, "deploys/backup.py", "--sudo", inventory="inventory-flag.py")
    return sudo_fleet


def test_a_login_without_sudo_stops_the_run_before_any_host_changes(backed_up):
    refused = backed_up["runs"]["no sudo"]
    assert refused.returncode == 1, refused.stdout[-6000:]
    for name in CLIENTS + [SERVER]:
        assert (f'{name}: pyinfra logs in as ops without sudo: borg, its keys and this project\'s records on the host '
                f'are root\'s; give the host "_sudo": True in its data') in refused.stdout, refused.stdout[-6000:]
        before, after = backed_up["untouched"][name]
        assert before == after, (name, before, after)
    assert "Starting operation" not in refused.stdout, refused.stdout[-6000:]


def test_backup_server_and_backup_run_over_sudo_from_a_normal_user(backed_up):
    fleet, runs = backed_up["fleet"], backed_up["runs"]
    assert runs["server"].returncode == 0, runs["server"].stdout[-6000:]
    assert runs["backup"].returncode == 0, runs["backup"].stdout[-6000:]
    for client in CLIENTS:
        listing = fleet.run(SERVER, f"BORG_PASSPHRASE={shlex.quote(backed_up['passes'][client])} "
                                    f"borg list --short /var/lib/borgbackup/{client}").stdout.split()
        assert any(name.startswith(f"{client}-system-state-") for name in listing), listing
        assert any(name.startswith(f"{client}-system-") and "-state-" not in name for name in listing), listing
        records = fleet.run(client, "stat -c '%U %a %n' /var/lib/pyinfra-backup /var/lib/pyinfra-backup/jobs/system/*")
        assert all(line.startswith("root ") for line in records.stdout.splitlines()), records.stdout
        assert fleet.run(client, "stat -c %U /root/.ssh").stdout.strip() == "root"
    for name in CLIENTS + [SERVER]:  # root's authorized_keys holds the same key: the logins were ops' all the same
        logins = fleet.run(name, "grep -o 'Accepted publickey for [a-z]*' /var/log/sshd.log | sort | uniq -c").stdout
        assert "for ops" in logins and "for root" not in logins, (name, logins)
        assert "/var/lib/pyinfra-backup/ssh/id_ed25519" not in backed_up["untouched"][client][0]  # made by this run
        assert fleet.run(client, "stat -c '%U %a' /var/lib/pyinfra-backup/ssh/id_ed25519").stdout == "root 600\n"


def test_a_second_backup_over_sudo_changes_nothing_and_so_does_one_with_the_sudo_flag(backed_up):
    for again in (backed_up["runs"]["again"], backed_up["runs"]["flag"]):
        assert again.returncode == 0, again.stdout[-6000:]
        assert "] Success" not in again.stdout and "No changes" in again.stdout, again.stdout[-6000:]


def test_the_fleet_report_reads_over_sudo(backed_up):
    report = as_operator(backed_up["home"], backed_up["etc"], str(PROJECT / ".venv/bin/python"), "-m",
                         "pyinfra_backup.report", "inventory.py", "--json")
    assert report.returncode == 0, report.stdout[-6000:]
    hosts = json.loads(report.stdout)["hosts"]
    assert [hosts[client]["jobs"]["system"]["status"] for client in CLIENTS] == ["fresh"] * len(CLIENTS), hosts


def test_the_operator_state_lives_in_the_normal_users_home(backed_up):
    home = backed_up["home"]
    listing = subprocess.run(["find", str(home), "-printf", "%u %P\\n"], capture_output=True, text=True).stdout
    # the archive ledger of the operator's prunes, the validation cache, the operator's borg (base dir = HOME)
    for path in (".local/state/pyinfra-backup/ledger", ".cache/pyinfra-backup/valid", ".config/borg/security",
                 ".cache/borg"):
        assert (home / path).is_dir() and (home / path).stat().st_uid == UID, (path, listing)
    assert all(line.startswith(f"{UID} ") or line.startswith(f"{OPERATOR} ") for line in listing.splitlines()), listing


def test_verify_over_sudo(backed_up):
    verify = run(backed_up, "deploys/verify.py", "--data", "backup_force_check=true")
    assert verify.returncode == 0, verify.stdout[-6000:]
    for client in CLIENTS:
        for drill in (f"job system: drill of {client}-system-",
                      f"job system state archive: drill of {client}-system-state-"):
            assert f"[{client}] {drill}" in verify.stdout, verify.stdout[-6000:]
    checks = [line for line in verify.stdout.splitlines() if line.strip().startswith("borg check system")]
    assert checks and checks[0].split()[3:] == ["2", "2", "-", "-"], verify.stdout[-6000:]  # both checked, no error


def test_recover_with_the_sudo_flag_brings_back_a_clients_data_and_identity(backed_up):
    fleet, client = backed_up["fleet"], CLIENTS[0]
    data, machine_id = tree(fleet, client, "/srv/data"), fleet.run(client, "cat /etc/machine-id").stdout
    fleet.run(client, "rm -rf /srv/data && echo 0123456789abcdef0123456789abcdef > /etc/machine-id")
    first = run(backed_up, "deploys/recover.py", "--limit", client, "--sudo", inventory="inventory-flag.py")
    assert first.returncode == 0, first.stdout[-6000:]
    assert tree(fleet, client, "/srv/data") == data
    assert fleet.run(client, "cat /etc/machine-id").stdout == machine_id
    again = run(backed_up, "deploys/recover.py", "--limit", client, "--sudo", inventory="inventory-flag.py")
    assert again.returncode == 0 and "] Success" not in again.stdout, again.stdout[-6000:]


def test_the_escrow_reads_each_key_and_passphrase_over_sudo(backed_up):
    """The key export and the passCommand are read by our own command on the host, as root through sudo;
    what reaches the operator's home decrypts to the host's key and passphrase."""
    escrow = backed_up["home"] / ".local/state/pyinfra-backup/escrow"
    identity = backed_up["escrow_identity"]
    for client in CLIENTS:
        secret = pyrage.decrypt((escrow / client / "system.pass.age").read_bytes(), [identity])
        assert secret == backed_up["passes"][client].encode(), client
        export = pyrage.decrypt((escrow / client / "system.key.age").read_bytes(), [identity]).decode()
        assert export.startswith("BORG_KEY "), export[:20]
        assert (escrow / client / "system.key.age").stat().st_uid == UID
