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
PG = "/usr/lib/postgresql/15/bin"
START_POSTGRES = rf"""
set -e
install -d -o postgres -g postgres /run/postgresql /var/lib/pbk-pg
runuser -u postgres -- {PG}/initdb -D /var/lib/pbk-pg/data -A peer >/dev/null
runuser -u postgres -- {PG}/pg_ctl -D /var/lib/pbk-pg/data -o "-k /run/postgresql -c listen_addresses=''" \
  -l /var/lib/pbk-pg/log -w start >/dev/null
"""
SHOP = r"""
set -e
runuser -u postgres -- createdb shop
runuser -u postgres -- psql -Xq -v ON_ERROR_STOP=1 shop -c "create table items (id int primary key, name text);
insert into items select g, md5(g::text) from generate_series(1, 3000) g;"
"""
ROWS = "runuser -u postgres -- psql -XAtq shop -c \"select count(*), md5(string_agg(id || name, ',' order by id)) from items\""
STOP_POSTGRES = f"runuser -u postgres -- {PG}/pg_ctl -D /var/lib/pbk-pg/data -w -m fast stop"
IDENTITY = ("cat /etc/machine-id; sha256sum /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub "
            "/var/lib/nixos/uid-map; stat -c '%n %u %g %a' /etc/ssh/ssh_host_ed25519_key /var/lib/nixos/uid-map")


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def recovery(_fleet_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recover")
    with Fleet() as fleet:
        fleet.up([CLIENT, SERVER])
        yield from _backed_up(fleet, tmp)


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
    fleet.run(CLIENT, START_POSTGRES + SHOP)

    job = {"paths": ["/srv/www"], "repo": f"borg@{SERVER}:.", "startAt": "daily", "postgresqlDatabases": [{"name": "shop"}],
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
              "old_key": fleet.host_key(CLIENT), "v1": _git(config, "rev-parse", "v1^{commit}"),
              "rows": fleet.run(CLIENT, ROWS).stdout}
    # The host dies; a freshly installed one takes its name: new machine-id and host keys, nothing else.
    # Its system (here: an empty PostgreSQL, as the rebuilt NixOS would start) is up before the data comes back.
    fleet.run(CLIENT, STOP_POSTGRES)
    fleet.remove(CLIENT)
    fleet.add(CLIENT)
    fleet.run(CLIENT, START_POSTGRES)
    assert fleet.run(CLIENT, IDENTITY, check=False).stdout != before["identity"]
    fresh = fleet.write_inventory(tmp / "inventory-fresh.py", data)  # pins the fresh host's key
    first = pyinfra(fresh, "deploys/recover.py", "--limit", CLIENT, env=env)
    # From now on the host has its old key again: the operator's original pin.
    (tmp / "known_hosts.old").write_text(fleet.known_hosts_path.read_text().replace(fleet.host_key(CLIENT), before["old_key"]))
    recovered = fleet.write_inventory(tmp / "inventory-recovered.py",
                                      {**data, CLIENT: {**client, "ssh_known_hosts_file": str(tmp / "known_hosts.old")}})
    try:
        yield {"fleet": fleet, "env": env, "before": before, "first": first, "inventory": recovered}
    finally:
        fleet.run(CLIENT, STOP_POSTGRES, check=False)


def test_one_recover_run_brings_back_identity_config_data_and_database_rows(recovery):
    fleet, first = recovery["fleet"], recovery["first"]
    assert first.returncode == 0, first.stdout
    assert fleet.run(CLIENT, IDENTITY).stdout == recovery["before"]["identity"]
    assert tree(fleet, CLIENT, "/srv/www") == recovery["before"]["data"]
    assert fleet.run(CLIENT, f"git -C {CONFIG} rev-parse HEAD").stdout.strip() == recovery["before"]["v1"]
    assert "git@git.example.org:fleet.git" in fleet.run(CLIENT, f"git -C {CONFIG} remote -v").stdout
    assert fleet.run(CLIENT, ROWS).stdout == recovery["before"]["rows"] and recovery["before"]["rows"].startswith("3000|")
    assert fleet.run(CLIENT, "ls -A /var/lib/pyinfra-backup/spool 2>/dev/null | wc -l").stdout.strip() == "0"  # no dump on disk


def test_the_run_ends_with_what_came_from_where_and_the_rto(recovery):
    out = recovery["first"].stdout
    summary = out[out.index("Recovery summary"):]
    for step, source in (("identity", "system: state"), ("config repo", "v1 = "), ("data system", "system: latest"),
                         ("database shop", "system: latest"),
                         ("verify", r"(\d+)/\1 identity files = web01-system-state-")):
        assert re.search(rf"\[{CLIENT}\]\s+{step}\s+[0-9.]+s\s+(?:restored|checked)\s+{source}", summary), summary
    assert re.search(rf"\[{CLIENT}\]\s+RTO\s+[0-9.]+s\n", summary), summary


def test_a_second_recover_run_changes_nothing(recovery):
    again = pyinfra(recovery["inventory"], "deploys/recover.py", "--limit", CLIENT, env=recovery["env"])
    assert again.returncode == 0 and "] Success" not in again.stdout, again.stdout


def test_the_recovered_host_backs_up_again_and_passes_the_infra_checks(recovery):
    run = pyinfra(recovery["inventory"], "deploys/backup.py", "--data", "backup_force=true", env=recovery["env"])
    assert run.returncode == 0, run.stdout  # its restored backup key and passCommand (restored host key) work
    checks = subprocess.run([str(PROJECT / ".venv/bin/pytest"), "-q", "-p", "no:cacheprovider", "tests/infra",
                             "--inventory", str(recovery["inventory"]), "--limit", CLIENT],
                            cwd=PROJECT, capture_output=True, text=True, env={**os.environ, **recovery["env"]})
    assert checks.returncode == 0, checks.stdout[-3000:]


def test_a_config_bundle_that_git_cannot_make_fails_with_gits_own_reason(fleet_factory, tmp_path):
    fleet = fleet_factory(["cfg01"])
    source = tmp_path / "fleet-config"
    subprocess.run(["git", "init", "-q", "-b", "main", str(source)], check=True)
    (source / "flake.nix").write_text("{ outputs = _: { }; }\n")
    _git(source, "add", "-A")
    _git(source, "-c", "user.name=op", "-c", "user.email=op@x", "commit", "-q", "-m", "fleet v1")
    blob = _git(source, "rev-parse", "HEAD:flake.nix")  # the commit resolves, its file's object is gone
    (source / ".git" / "objects" / blob[:2] / blob[2:]).unlink()
    data = {"cfg01": {"config_repo": {"path": CONFIG, "remotes": {"origin": "git@git.example.org:fleet.git"}},
                      "recover_config_source": str(source)}}
    run = pyinfra(fleet.write_inventory(tmp_path / "inventory.py", data), "tasks.recover.config")
    assert run.returncode != 0, run.stdout
    assert re.search(rf"\[cfg01\] config repo: git bundle of {source} failed \(exit \d+\): "
                     rf"fatal: unable to read {blob}", run.stdout), run.stdout
    assert fleet.run("cfg01", f"test -e {CONFIG}", check=False).returncode != 0  # nothing checked out
