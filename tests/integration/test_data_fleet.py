"""PostgreSQL databases and podman volumes in a job's archive, on a fleet of its own: a repo server and
two clients. app01 runs a real PostgreSQL 15 (Debian's binaries, a cluster made in the host) and has a
podman volume; app02 has a podman volume only. The tests run in file order on one shared setup.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess

import pytest

from tests.fleet import Fleet
from tests.integration.helpers import operator_borg, pyinfra

pytestmark = pytest.mark.fleet

CLIENTS = ["app01", "app02"]
PG = "/usr/lib/postgresql/15/bin"
PGDATA = "/var/lib/pbk-pg/data"
SPOOL = "/var/lib/pyinfra-backup/spool/data"
POSTGRES_SETUP = rf"""
set -e
install -d -o postgres -g postgres /run/postgresql /var/lib/pbk-pg
runuser -u postgres -- {PG}/initdb -D {PGDATA} -A peer >/dev/null
runuser -u postgres -- {PG}/pg_ctl -D {PGDATA} -o "-k /run/postgresql -c listen_addresses=''" -l /var/lib/pbk-pg/log -w start >/dev/null
runuser -u postgres -- createuser shopkeeper
runuser -u postgres -- createdb -O shopkeeper shop
runuser -u postgres -- createdb notes
runuser -u postgres -- psql -Xq -v ON_ERROR_STOP=1 shop <<'SQL'
create table items (id int primary key, name text not null, price numeric(10, 2), added timestamptz default now());
insert into items (id, name, price) select g, md5(g::text), g * 1.25 from generate_series(1, 5000) g;
create view cheap as select * from items where price < 10;
alter table items owner to shopkeeper;
SQL
runuser -u postgres -- psql -Xq -v ON_ERROR_STOP=1 notes -c "create table note (id serial primary key, body text); insert into note (body) values ('it''s a note'), (E'two\nlines');"
"""
VOLUME_SETUP = r"""
set -e
podman volume create appdata >/dev/null
cd "$(podman volume inspect --format '{{.Mountpoint}}' appdata)"
echo "hello from $(hostname)" > hello.txt
mkdir -p conf/empty && printf 'key = value\n' > conf/app.conf && chmod 0640 conf/app.conf
head -c 200000 /dev/urandom > blob.bin
chown -R 999:998 conf && chmod 0750 conf
ln -s hello.txt link
chown 999:998 . && chmod 0770 .
umask 077 && printf '%s' "$PASS" > /root/borg-pass
"""
TREE = ("cd \"$(podman volume inspect --format '{{.Mountpoint}}' appdata)\" && "
        "find . -printf '%p %U %G %m %y %l\\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum")
ROWS = ("runuser -u postgres -- psql -XAtq shop -c \"select count(*), md5(string_agg(id || ':' || name || ':' || price || "
        "':' || added, ',' order by id)) from items\"")
NOTES = "runuser -u postgres -- psql -XAtq notes -c \"select string_agg(id || '=' || body, ';' order by id) from note\""


def job(databases=(), volumes=("appdata",)):
    return {
        "repo": "borg@backup:.",
        "encryption": {"mode": "repokey-blake2", "passCommand": "cat /root/borg-pass"},
        "startAt": "daily",
        "postgresqlDatabases": list(databases),
        "volumes": list(volumes),
    }


GOOD = {"app01": job([{"name": "shop"}, {"name": "notes", "format": "plain"}]), "app02": job()}


@pytest.fixture(scope="module")
def setup(_fleet_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data-fleet")
    fleet = Fleet()
    try:
        fleet.up(["backup", *CLIENTS])
        op_key = tmp / "operator_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(op_key)], check=True)
        passphrases = {name: "pp-" + secrets.token_hex(12) for name in CLIENTS}
        fleet.run("app01", POSTGRES_SETUP)
        for name in CLIENTS:
            fleet.run(name, f"export PASS={passphrases[name]}\n" + VOLUME_SETUP)
        server = {"borgbackup": {"repos": {}, "operatorKeys": [op_key.with_suffix(".pub").read_text().strip()]}}

        def inventory(name, jobs):
            data = {client: {"borgbackup": {"jobs": {"data": jobs[client]}, "operatorIdentity": str(op_key),
                                            "lockWait": 5}} for client in CLIENTS}
            return fleet.write_inventory(tmp / name, {**data, "backup": server},
                                         {"clients": CLIENTS, "servers": ["backup"]})

        env = {"BORG_BASE_DIR": str(tmp / "operator-borg")}
        state = {"fleet": fleet, "op_key": op_key, "pass": passphrases, "env": env, "make_inventory": inventory,
                 "inventory": inventory("inventory.py", GOOD)}
        state["server_run"] = pyinfra(state["inventory"], "deploys/backup_server.py", env=env)
        state["first_run"] = pyinfra(state["inventory"], "deploys/backup.py", env=env)
        yield state
    finally:
        if "app01" in fleet:
            fleet.run("app01", f"runuser -u postgres -- {PG}/pg_ctl -D {PGDATA} -w -m fast stop", check=False)
        fleet.down()


def run(setup, *args, inventory=None):
    return pyinfra(inventory or setup["inventory"], *args, env=setup["env"])


def archives(setup, client):
    out = operator_borg(setup, client, "list", "--json", "{repo}")
    return [a["name"] for a in json.loads(out.stdout)["archives"]]


def archive_paths(setup, client, archive):
    out = operator_borg(setup, client, "list", "--format", "{path}{NL}", f"{{repo}}::{archive}")
    return set(out.stdout.splitlines())


def test_backup_stores_dumps_and_volume_and_leaves_no_plaintext(setup):
    assert setup["server_run"].returncode == 0, setup["server_run"].stdout
    assert setup["first_run"].returncode == 0, setup["first_run"].stdout
    fleet = setup["fleet"]
    [name] = archives(setup, "app01")
    paths = archive_paths(setup, "app01", name)
    spool = SPOOL.lstrip("/")
    assert {f"{spool}/manifest.json", f"{spool}/postgresql/shop.dump", f"{spool}/postgresql/notes.sql"} <= paths
    assert "var/lib/containers/storage/volumes/appdata/_data/conf/app.conf" in paths
    manifest = json.loads(operator_borg(setup, "app01", "extract", "--stdout", f"{{repo}}::{name}",
                                        f"{spool}/manifest.json").stdout)
    assert manifest["databases"]["shop"] == {"user": "postgres", "format": "custom", "file": "postgresql/shop.dump"}
    assert manifest["volumes"]["appdata"] == {"engine": "podman", "uid": 999, "gid": 998, "mode": "770",
                                              "mountpoint": "/var/lib/containers/storage/volumes/appdata/_data"}
    plain = operator_borg(setup, "app01", "extract", "--stdout", f"{{repo}}::{name}", f"{spool}/postgresql/notes.sql")
    assert "CREATE DATABASE notes WITH" in plain.stdout and "it's a note" in plain.stdout
    for client in CLIENTS:  # nothing of the dumps is left on the hosts
        assert fleet.run(client, f"test -e {SPOOL} || echo gone").stdout == "gone\n"
        assert fleet.run(client, "find / -xdev \\( -name '*.dump' -o -name 'notes.sql' \\) -print").stdout == ""


def test_rerun_changes_nothing(setup):
    again = run(setup, "deploys/backup.py")
    assert again.returncode == 0 and "] Success" not in again.stdout, again.stdout
    assert len(archives(setup, "app01")) == 1


def test_dropped_database_is_restored_by_name_with_the_same_rows(setup):
    fleet = setup["fleet"]
    rows = fleet.run("app01", ROWS).stdout
    notes = fleet.run("app01", NOTES).stdout
    assert rows.startswith("5000|")
    fleet.run("app01", "runuser -u postgres -- dropdb shop && runuser -u postgres -- dropdb notes")
    for name in ("shop", "notes"):
        restored = run(setup, "tasks.data.restore_database", "job=data", f"database={name}", "--limit", "app01")
        assert restored.returncode == 0, restored.stdout
    assert fleet.run("app01", ROWS).stdout == rows
    assert fleet.run("app01", NOTES).stdout == notes == "1=it's a note;2=two\nlines\n"
    owner = "runuser -u postgres -- psql -XAtq -c \"select pg_get_userbyid(datdba) from pg_database where datname = 'shop'\""
    assert fleet.run("app01", owner).stdout == "shopkeeper\n"
    again = run(setup, "tasks.data.restore_database", "job=data", "database=shop", "--limit", "app01", "-v")
    assert again.returncode == 0 and "already restored" in again.stdout and "] Success" not in again.stdout


def test_a_non_empty_database_is_replaced_only_with_overwrite(setup):
    fleet = setup["fleet"]
    rows = fleet.run("app01", ROWS).stdout
    fleet.run("app01", "runuser -u postgres -- dropdb shop && runuser -u postgres -- createdb shop && "
                       "runuser -u postgres -- psql -Xq shop -c 'create table mine (x int)'")
    refused = run(setup, "tasks.data.restore_database", "job=data", "database=shop", "--limit", "app01")
    assert refused.returncode != 0
    assert re.search(r"\[app01\].*database shop exists and is not empty .*overwrite=true", refused.stdout), refused.stdout
    assert fleet.run("app01", "runuser -u postgres -- psql -XAtq shop -c 'select count(*) from mine'").stdout == "0\n"
    forced = run(setup, "tasks.data.restore_database", "job=data", "database=shop", "overwrite=true", "--limit", "app01")
    assert forced.returncode == 0, forced.stdout
    assert fleet.run("app01", ROWS).stdout == rows


def test_volume_files_deleted_then_the_volume_removed_are_restored_identical(setup):
    fleet = setup["fleet"]
    tree = fleet.run("app01", TREE).stdout
    assert "./conf/app.conf 999 998 640 f" in tree and ". 999 998 770 d" in tree
    fleet.run("app01", "cd \"$(podman volume inspect --format '{{.Mountpoint}}' appdata)\" && rm -rf ./* ./.[!.]*")
    restored = run(setup, "tasks.data.restore_volume", "job=data", "volume=appdata", "--limit", "app01")
    assert restored.returncode == 0, restored.stdout
    assert fleet.run("app01", TREE).stdout == tree
    again = run(setup, "tasks.data.restore_volume", "job=data", "volume=appdata", "--limit", "app01", "-v")
    assert again.returncode == 0 and "already restored" in again.stdout and "] Success" not in again.stdout
    fleet.run("app01", "podman volume rm appdata >/dev/null")
    recreated = run(setup, "tasks.data.restore_volume", "job=data", "volume=appdata", "--limit", "app01")
    assert recreated.returncode == 0, recreated.stdout
    assert fleet.run("app01", TREE).stdout == tree  # the mountpoint's own owner and mode too


def test_a_non_empty_volume_is_written_only_with_overwrite(setup):
    fleet = setup["fleet"]
    tree = fleet.run("app02", TREE).stdout
    fleet.run("app02", "cd \"$(podman volume inspect --format '{{.Mountpoint}}' appdata)\" && echo changed > hello.txt")
    refused = run(setup, "tasks.data.restore_volume", "job=data", "volume=appdata", "--limit", "app02")
    assert refused.returncode != 0 and re.search(r"\[app02\].*volume appdata is not empty", refused.stdout), refused.stdout
    assert "changed" in fleet.run("app02", "cat /var/lib/containers/storage/volumes/appdata/_data/hello.txt").stdout
    forced = run(setup, "tasks.data.restore_volume", "job=data", "volume=appdata", "overwrite=true", "--limit", "app02")
    assert forced.returncode == 0, forced.stdout
    assert fleet.run("app02", TREE).stdout == tree


def test_unknown_names_in_a_restore_fail_that_host_clearly(setup):
    db = run(setup, "tasks.data.restore_database", "job=data", "database=nope", "--limit", "app01")
    assert db.returncode != 0
    assert re.search(r"\[app01\].*app01: job data: archive app01-data-\S+ holds no database 'nope' "
                     r"\(databases in it: notes, shop\)", db.stdout), db.stdout
    volume = run(setup, "tasks.data.restore_volume", "job=data", "volume=ghost", "--limit", "app02")
    assert volume.returncode != 0
    assert re.search(r"\[app02\].*holds no volume 'ghost' \(volumes in it: appdata\)", volume.stdout), volume.stdout


def test_unknown_database_or_missing_volume_fails_the_backup_before_borg_runs(setup):
    fleet = setup["fleet"]
    before = {client: archives(setup, client) for client in CLIENTS}
    trees = {client: fleet.run(client, TREE).stdout for client in CLIENTS}
    rows = fleet.run("app01", ROWS).stdout
    bad = setup["make_inventory"]("inventory-bad.py", {
        "app01": job([{"name": "shop"}, {"name": "nope"}]),
        "app02": job(volumes=["appdata", "ghost"]),
    })
    failed = run(setup, "deploys/backup.py", "--data", "backup_force=true", inventory=bad)
    assert failed.returncode != 0
    out = failed.stdout
    assert re.search(r"\[app01\].*job data: postgresql database nope \(as postgres\): pg_dump failed: .*"
                     r"database \"nope\" does not exist", out), out
    assert re.search(r"\[app02\].*job data: volume ghost: not found: podman: .*no such volume", out), out
    assert {client: archives(setup, client) for client in CLIENTS} == before
    assert {client: fleet.run(client, TREE).stdout for client in CLIENTS} == trees
    assert fleet.run("app01", ROWS).stdout == rows
    for client in CLIENTS:
        assert fleet.run(client, f"test -e {SPOOL} || echo gone").stdout == "gone\n"
