"""A whole-host recovery: a backed-up host is replaced by a fresh one (new machine-id, new host
keys, no data, no backup key, its borg passphrase undecryptable), and one run of
deploys/recover.py brings back its identity, its config repo (with the age-encrypted secret its
passCommand decrypts with the restored host key) and its data; the testinfra checks pass after
the next backup run enrolls it again."""

from __future__ import annotations

import base64
import os
import re
import subprocess

import pytest

from tests.fleet import Fleet
from tests.integration.helpers import PROJECT, pyinfra, tree

pytestmark = pytest.mark.fleet

CLIENT, SERVER = "web01", "backup"
CONFIG = "/etc/fleet-config"
SECRET = f"{CONFIG}/secrets/borg-pass.age"
DATA = r"""
set -e
mkdir -p /srv/www/site && echo "<h1>$(hostname)</h1>" > /srv/www/site/index.html
head -c 300000 /dev/urandom > /srv/www/site/blob && chown 33:33 /srv/www/site/blob && chmod 0640 /srv/www/site/blob
mkdir -p /var/lib/nixos && echo '{"uid": {"www": 990}}' > /var/lib/nixos/uid-map && chmod 0600 /var/lib/nixos/uid-map
"""
IDENTITY = ("cat /etc/machine-id; sha256sum /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub "
            "/var/lib/nixos/uid-map; stat -c '%n %u %g %a' /etc/ssh/ssh_host_ed25519_key /var/lib/nixos/uid-map")


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def recovery(_fleet_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recover")
    with Fleet() as fleet:
        fleet.up([CLIENT, SERVER])
        yield _backed_up(fleet, tmp)


def _backed_up(fleet, tmp):
    op_key = tmp / "operator_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(op_key)], check=True)
    passfile = tmp / "web01.pass"
    passfile.write_text("pp-recover-" + op_key.read_bytes().hex()[-24:])
    # The operator's clone of the config repo holds the host's borg passphrase, age-encrypted to its host key.
    config = tmp / "fleet-config"
    (config / "secrets").mkdir(parents=True)
    host_key = fleet.run(CLIENT, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.strip()
    subprocess.run(["age", "-r", host_key, "-o", str(config / "secrets/borg-pass.age"), str(passfile)], check=True)
    (config / "flake.nix").write_text("{ outputs = _: { }; }\n")
    subprocess.run(["git", "init", "-q", "-b", "main", str(config)], check=True)
    _git(config, "add", "-A")
    _git(config, "-c", "user.name=op", "-c", "user.email=op@x", "commit", "-q", "-m", "fleet v1")
    _git(config, "-c", "user.name=op", "-c", "user.email=op@x", "tag", "-a", "v1", "-m", "v1")
    (config / "flake.nix").write_text("{ outputs = _: { v = 2; }; }\n")
    _git(config, "-c", "user.name=op", "-c", "user.email=op@x", "commit", "-q", "-am", "fleet v2 (not deployed)")
    secret = base64.b64encode((config / "secrets/borg-pass.age").read_bytes()).decode()
    fleet.run(CLIENT, DATA + f"mkdir -p {CONFIG}/secrets && echo {secret} | base64 -d > {SECRET}")

    job = {"paths": ["/srv/www"], "repo": f"borg@{SERVER}:.", "startAt": "daily",
           "encryption": {"mode": "repokey-blake2", "passCommand": f"age -d -i /etc/ssh/ssh_host_ed25519_key {SECRET}"}}
    client = {"borgbackup": {"jobs": {"system": job}, "operatorIdentity": str(op_key)},
              "system_state": {"job": "system"},
              "config_repo": {"path": CONFIG, "remotes": {"origin": "git@git.example.org:fleet.git"}},
              "recover_passCommand": f"cat {passfile}", "recover_config_source": str(config), "recover_ref": "v1",
              "recover_checks": ["test -s /srv/www/site/index.html", f"git -C {CONFIG} diff --quiet"]}
    server = {"borgbackup": {"repos": {}, "operatorKeys": [op_key.with_suffix(".pub").read_text().strip()]}}
    data = {CLIENT: client, SERVER: server}
    env = {"BORG_BASE_DIR": str(tmp / "operator-borg")}
    inventory = fleet.write_inventory(tmp / "inventory.py", data)
    for deploy in ("deploys/backup_server.py", "deploys/backup.py"):
        run = pyinfra(inventory, deploy, env=env)
        assert run.returncode == 0, run.stdout
    before = {"identity": fleet.run(CLIENT, IDENTITY).stdout, "data": tree(fleet, CLIENT, "/srv/www"),
              "old_key": fleet.host_key(CLIENT), "v1": _git(config, "rev-parse", "v1^{commit}")}
    # The host dies; a freshly installed one takes its name: new machine-id and host keys, nothing else.
    fleet.remove(CLIENT)
    fleet.add(CLIENT)
    assert fleet.run(CLIENT, IDENTITY, check=False).stdout != before["identity"]
    fresh = fleet.write_inventory(tmp / "inventory-fresh.py", data)  # pins the fresh host's key
    first = pyinfra(fresh, "deploys/recover.py", "--limit", CLIENT, env=env)
    # From now on the host has its old key again: the operator's original pin.
    (tmp / "known_hosts.old").write_text(fleet.known_hosts_path.read_text().replace(fleet.host_key(CLIENT), before["old_key"]))
    recovered = fleet.write_inventory(tmp / "inventory-recovered.py",
                                      {**data, CLIENT: {**client, "ssh_known_hosts_file": str(tmp / "known_hosts.old")}})
    return {"fleet": fleet, "env": env, "before": before, "first": first, "inventory": recovered}


def test_one_recover_run_brings_back_identity_config_and_data(recovery):
    fleet, first = recovery["fleet"], recovery["first"]
    assert first.returncode == 0, first.stdout
    assert fleet.run(CLIENT, IDENTITY).stdout == recovery["before"]["identity"]
    assert tree(fleet, CLIENT, "/srv/www") == recovery["before"]["data"]
    assert fleet.run(CLIENT, f"git -C {CONFIG} rev-parse HEAD").stdout.strip() == recovery["before"]["v1"]
    assert "git@git.example.org:fleet.git" in fleet.run(CLIENT, f"git -C {CONFIG} remote -v").stdout


def test_the_run_ends_with_what_came_from_where_and_the_rto(recovery):
    out = recovery["first"].stdout
    summary = out[out.index("Recovery summary"):]
    for step, source in (("identity", "system: state"), ("config repo", "v1 = "), ("data system", "system: latest"),
                         ("verify", r"(\d+)/\1 identity files = web01-system-state-")):
        assert re.search(rf"\[{CLIENT}\]\s+{step}\s+[0-9.]+s\s+(?:restored|checked)\s+{source}", summary), summary
    assert re.search(rf"\[{CLIENT}\]\s+RTO\s+[0-9.]+s\n", summary), summary


def test_a_second_recover_run_changes_nothing(recovery):
    again = pyinfra(recovery["inventory"], "deploys/recover.py", "--limit", CLIENT, env=recovery["env"])
    assert again.returncode == 0 and "] Success" not in again.stdout, again.stdout


def test_the_recovered_host_backs_up_again_and_passes_the_infra_checks(recovery):
    run = pyinfra(recovery["inventory"], "deploys/backup.py", "--data", "backup_force=true", env=recovery["env"])
    assert run.returncode == 0, run.stdout  # enrolled again; the passCommand decrypts with the restored host key
    checks = subprocess.run([str(PROJECT / ".venv/bin/pytest"), "-q", "-p", "no:cacheprovider", "tests/infra",
                             "--inventory", str(recovery["inventory"]), "--limit", CLIENT],
                            cwd=PROJECT, capture_output=True, text=True, env={**os.environ, **recovery["env"]})
    assert checks.returncode == 0, checks.stdout[-3000:]
