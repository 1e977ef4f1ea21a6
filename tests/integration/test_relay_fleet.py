"""Bare-metal restore relayed by the operator: a host that lost its backup key, its passphrase
and its SSH host keys gets its identity and data back from borg run on the operator's machine,
then enrolls again and decrypts its (age) secret with its restored host key, as usual."""

from __future__ import annotations

import subprocess

import pytest

from tests.fleet import Fleet
from tests.integration.helpers import pyinfra, tree

pytestmark = pytest.mark.fleet

CLIENT, SERVER = "metal01", "backup"
SETUP = r"""
set -e
mkdir -p /srv/data/app && echo "state of $(hostname)" > /srv/data/app/state.txt
head -c 200000 /dev/urandom > /srv/data/app/blob && chown 1234:2345 /srv/data/app/blob && chmod 0640 /srv/data/app/blob
ln -s app/state.txt /srv/data/link
umask 077 && printf '%s' "$PASS" | age -R /etc/ssh/ssh_host_ed25519_key.pub -o /etc/borg-pass.age
"""
IDENTITY = "sha256sum /etc/machine-id /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub; stat -c '%n %U %a' /etc/ssh/ssh_host_ed25519_key"
WIPE = r"""
set -e
rm -rf /var/lib/pyinfra-backup /srv/data /etc/borg-pass.age /root/.cache/borg /root/.config/borg
rm -f /etc/ssh/ssh_host_* && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > /etc/machine-id
"""


@pytest.fixture(scope="module")
def metal(_fleet_session, tmp_path_factory):
    with Fleet() as fleet:
        fleet.up([CLIENT, SERVER])
        yield _backed_up_then_wiped(fleet, tmp_path_factory.mktemp("relay"))


def _backed_up_then_wiped(fleet, tmp):
    op_key = tmp / "operator_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(op_key)], check=True)
    passfile = tmp / "metal01.pass"
    passfile.write_text("pp-relay-" + op_key.read_bytes().hex()[-24:])
    passfile.chmod(0o600)
    fleet.run(CLIENT, f"export PASS={passfile.read_text()}\n" + SETUP)
    job = {"paths": ["/srv/data", "/etc/ssh", "/etc/machine-id", "/etc/borg-pass.age"], "repo": f"borg@{SERVER}:.",
           "encryption": {"mode": "repokey-blake2",
                          "passCommand": "age -d -i /etc/ssh/ssh_host_ed25519_key /etc/borg-pass.age"},
           "startAt": "daily"}
    client = {"borgbackup": {"jobs": {"system": job}, "operatorIdentity": str(op_key)},
              "recover_passCommand": f"cat {passfile}"}
    server = {"borgbackup": {"repos": {}, "operatorKeys": [op_key.with_suffix(".pub").read_text().strip()]}}
    inventory = fleet.write_inventory(tmp / "inventory.py", {CLIENT: client, SERVER: server})
    env = {"BORG_BASE_DIR": str(tmp / "operator-borg")}
    for deploy in ("deploys/backup_server.py", "deploys/backup.py"):
        run = pyinfra(inventory, deploy, env=env)
        assert run.returncode == 0, run.stdout
    before = {"data": tree(fleet, CLIENT, "/srv/data"), "identity": fleet.run(CLIENT, IDENTITY).stdout}
    old_key = fleet.host_key(CLIENT)
    fleet.run(CLIENT, WIPE)
    # The operator checks the fresh install's new host key out of band and connects with it.
    new_key = fleet.run(CLIENT, "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub").stdout.strip()
    fresh_known_hosts = tmp / "known_hosts.fresh"
    fresh_known_hosts.write_text(fleet.known_hosts_path.read_text().replace(old_key, new_key))
    fresh = fleet.write_inventory(tmp / "inventory-fresh.py",
                                  {CLIENT: {**client, "ssh_known_hosts_file": str(fresh_known_hosts)}, SERVER: server})
    return {"fleet": fleet, "inventory": inventory, "fresh": fresh, "env": env, "before": before}


def test_a_non_empty_target_is_refused_without_overwrite(metal):
    refused = pyinfra(metal["fresh"], "tasks.relay.restore", "job=system", "--limit", CLIENT, env=metal["env"])
    assert refused.returncode != 0 and "restore target / is not empty" in refused.stdout and "overwrite=True" in refused.stdout
    assert metal["fleet"].run(CLIENT, "test -e /srv/data", check=False).returncode != 0


def test_bare_metal_identity_and_data_come_back_through_the_operator(metal):
    fleet = metal["fleet"]
    run = pyinfra(metal["fresh"], "tasks.relay.restore", "job=system", "overwrite=true", "--limit", CLIENT, env=metal["env"])
    assert run.returncode == 0, run.stdout
    assert "relayed metal01-system-" in run.stdout and "replaced /etc/machine-id" in run.stdout, run.stdout
    assert fleet.run(CLIENT, IDENTITY).stdout == metal["before"]["identity"]
    assert tree(fleet, CLIENT, "/srv/data") == metal["before"]["data"]
    kept = fleet.run(CLIENT, "ls /var/lib/pyinfra-backup/replaced/*/etc/ssh/").stdout.split()
    assert "ssh_host_ed25519_key" in kept  # the fresh install's key was moved aside, not lost
    # The host has its old host key again: the operator's original pin is the one that matches now.
    again = pyinfra(metal["inventory"], "tasks.relay.restore", "job=system", "overwrite=true", "--limit", CLIENT, "-v",
                    env=metal["env"])
    assert again.returncode == 0 and "No changes" in again.stdout and "already restored" in again.stdout


def test_the_restored_host_is_known_again_enrolls_and_decrypts_its_secret(metal):
    fleet = metal["fleet"]
    pinned = subprocess.run(fleet.ssh_command(CLIENT, "true"), capture_output=True, text=True)
    assert pinned.returncode == 0, pinned.stderr  # OpenSSH with the operator's original pin, too
    run = pyinfra(metal["inventory"], "deploys/backup.py", "--data", "backup_force=true", env=metal["env"])
    assert run.returncode == 0, run.stdout  # new backup key enrolled, passCommand decrypts with the old host key
    assert fleet.run(CLIENT, "test -s /var/lib/pyinfra-backup/jobs/system/last-create.json", check=False).returncode == 0
