"""PostgreSQL databases and podman volumes in a job's archive, on a fleet of its own: a repo server and
two clients. app01 runs a real PostgreSQL 15 (Debian's binaries, a cluster made in the host) and has a
podman volume; app02 has two podman volumes. The tests run in file order on one shared setup, each
pyinfra run working on both clients where one scenario per client fits.
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
MOUNTPOINT = "/var/lib/containers/storage/volumes/appdata/_data"
CACHE_SETUP = r"""
set -e
podman volume create cache >/dev/null
cd "$(podman volume inspect --format '{{.Mountpoint}}' cache)"
head -c 50000 /dev/urandom > index && chown 33:33 index && chmod 0600 index && chmod 0700 .
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


GOOD = {"app01": job([{"name": "shop"}, {"name": "notes", "format": "plain"}]), "app02": job(volumes=["appdata", "cache"])}


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
        fleet.run("app02", CACHE_SETUP)
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


def succeeded(result, client) -> bool:
    return bool(re.search(rf"\[{client}\]\s+Success", result.stdout))


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
        found = fleet.run(client, "find /var/lib/pyinfra-backup /tmp /run /root \\( -name '*.dump' -o -name '*.sql' \\)")
        assert found.stdout == ""


def test_rerun_changes_nothing(setup):
    again = run(setup, "deploys/backup.py")
    assert again.returncode == 0 and not re.search(r"\]\s+Success", again.stdout), again.stdout
    assert len(archives(setup, "app01")) == 1


def test_dropped_database_is_restored_by_name_with_the_same_rows(setup):
    fleet = setup["fleet"]
    rows = fleet.run("app01", ROWS).stdout
    assert rows.startswith("5000|")
    fleet.run("app01", "runuser -u postgres -- dropdb shop")
    restored = run(setup, "tasks.data.restore_database", "job=data", "database=shop", "--limit", "clients")
    assert re.search(r"\[app02\].*app02: job data: archive app02-data-\S+ holds no database 'shop' "
                     r"\(databases in it: none\)", restored.stdout), restored.stdout
    assert restored.returncode != 0 and succeeded(restored, "app01"), restored.stdout
    assert fleet.run("app01", ROWS).stdout == rows
    owner = "runuser -u postgres -- psql -XAtq -c \"select pg_get_userbyid(datdba) from pg_database where datname = 'shop'\""
    assert fleet.run("app01", owner).stdout == "shopkeeper\n"
    again = run(setup, "tasks.data.restore_database", "job=data", "database=shop", "--limit", "app01", "-v")
    assert again.returncode == 0 and "already restored" in again.stdout and not succeeded(again, "app01")


OWNER = "runuser -u postgres -- psql -XAtq -c \"select pg_get_userbyid(datdba) from pg_database where datname = 'shop'\""
ROLE = "runuser -u postgres -- psql -XAtq -c \"select rolcanlogin, rolcreatedb from pg_roles where rolname = 'shopkeeper'\""


def test_a_database_whose_owner_role_is_gone_comes_back_with_its_owner(setup):
    fleet = setup["fleet"]
    rows = fleet.run("app01", ROWS).stdout
    assert fleet.run("app01", ROLE).stdout == "t|f\n"
    # As on a fresh cluster: neither the database nor the role that owns it (roles are cluster-wide, not in a dump)
    fleet.run("app01", "runuser -u postgres -- dropdb shop && runuser -u postgres -- dropuser shopkeeper")
    restored = run(setup, "tasks.data.restore_database", "job=data", "database=shop", "--limit", "app01")
    assert restored.returncode == 0, restored.stdout
    assert fleet.run("app01", OWNER).stdout == "shopkeeper\n"
    assert fleet.run("app01", ROLE).stdout == "t|f\n"  # the role as it was (pg_dumpall --globals-only)
    assert fleet.run("app01", ROWS).stdout == rows


def test_a_non_empty_database_is_replaced_only_with_overwrite(setup):
    fleet = setup["fleet"]
    notes = fleet.run("app01", NOTES).stdout
    assert notes == "1=it's a note;2=two\nlines\n"
    fleet.run("app01", "runuser -u postgres -- dropdb notes && runuser -u postgres -- createdb notes && "
                       "runuser -u postgres -- psql -Xq notes -c 'create table mine (x int)'")
    refused = run(setup, "tasks.data.restore_database", "job=data", "database=notes", "--limit", "app01")
    assert refused.returncode != 0
    assert re.search(r"\[app01\].*database notes exists and is not empty .*overwrite=true", refused.stdout), refused.stdout
    assert fleet.run("app01", "runuser -u postgres -- psql -XAtq notes -c 'select count(*) from mine'").stdout == "0\n"
    forced = run(setup, "tasks.data.restore_database", "job=data", "database=notes", "overwrite=true", "--limit", "app01")
    assert forced.returncode == 0, forced.stdout
    assert fleet.run("app01", NOTES).stdout == notes  # a plain (SQL) dump, through psql


def test_deleted_volume_files_are_restored_identical_a_non_empty_volume_only_with_overwrite(setup):
    fleet = setup["fleet"]
    trees = {client: fleet.run(client, TREE).stdout for client in CLIENTS}
    assert "./conf/app.conf 999 998 640 f" in trees["app01"] and ". 999 998 770 d" in trees["app01"]
    fleet.run("app01", f"cd {MOUNTPOINT} && rm -rf ./* ./.[!.]*")
    fleet.run("app02", f"echo changed > {MOUNTPOINT}/hello.txt")
    first = run(setup, "tasks.data.restore_volume", "job=data", "volume=appdata", "--limit", "clients")
    assert first.returncode != 0 and succeeded(first, "app01"), first.stdout
    assert re.search(r"\[app02\].*volume appdata is not empty \(\d+ entries in \S+\): refusing", first.stdout), first.stdout
    assert fleet.run("app01", TREE).stdout == trees["app01"]
    assert fleet.run("app02", f"cat {MOUNTPOINT}/hello.txt").stdout == "changed\n"
    forced = run(setup, "tasks.data.restore_volume", "job=data", "volume=appdata", "overwrite=true", "--limit", "clients", "-v")
    assert forced.returncode == 0, forced.stdout
    assert re.search(r"\[app01\].*already restored", forced.stdout) and re.search(r"\[app01\]\s+No changes", forced.stdout)
    assert fleet.run("app02", TREE).stdout == trees["app02"]


def test_a_removed_volume_is_recreated_with_its_files_owner_and_mode(setup):
    fleet = setup["fleet"]
    tree = fleet.run("app02", TREE.replace("appdata", "cache")).stdout
    assert ". 0 0 700 d" in tree and "./index 33 33 600 f" in tree
    fleet.run("app02", "podman volume rm cache >/dev/null")
    restored = run(setup, "tasks.data.restore_volume", "job=data", "volume=cache", "--limit", "clients")
    assert restored.returncode != 0 and succeeded(restored, "app02"), restored.stdout
    assert re.search(r"\[app01\].*holds no volume 'cache' \(volumes in it: appdata\)", restored.stdout), restored.stdout
    assert fleet.run("app02", TREE.replace("appdata", "cache")).stdout == tree


def test_unknown_database_or_missing_volume_fails_the_backup_before_borg_runs(setup):
    fleet = setup["fleet"]
    before = {client: archives(setup, client) for client in CLIENTS}
    trees = {client: fleet.run(client, TREE).stdout for client in CLIENTS}
    rows = fleet.run("app01", ROWS).stdout
    bad = setup["make_inventory"]("inventory-bad.py", {
        "app01": job([{"name": "shop"}, {"name": "nope"}]),
        "app02": job(volumes=["appdata", "cache", "ghost"]),
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


def test_an_overwrite_whose_restore_fails_leaves_the_existing_database_untouched(setup):
    fleet = setup["fleet"]
    fleet.run("app01", "runuser -u postgres -- createdb tagged && runuser -u postgres -- psql -Xq -v ON_ERROR_STOP=1 tagged "
                       "-c 'create extension pg_trgm' -c 'create table t (x text)' -c \"insert into t values ('backed up')\"")
    tagged = setup["make_inventory"]("inventory-tagged.py", {"app01": job([{"name": "tagged"}]), "app02": GOOD["app02"]})
    backup = run(setup, "deploys/backup.py", "--data", "backup_force=true", "--limit", "app01", inventory=tagged)
    assert backup.returncode == 0, backup.stdout
    fleet.run("app01", "runuser -u postgres -- psql -Xq tagged -c \"insert into t values ('since the backup')\"")
    state = ("runuser -u postgres -- psql -XAtq tagged -c \"select (select oid from pg_database where datname = 'tagged'), "
             "string_agg(x, ',' order by x) from t\"")
    before = fleet.run("app01", state).stdout
    # The restore cannot succeed on this host any more: the extension the dump creates is not installed.
    control = "/usr/share/postgresql/15/extension/pg_trgm.control"
    fleet.run("app01", f"mv {control} {control}.away")
    try:
        failed = run(setup, "tasks.data.restore_database", "job=data", "database=tagged", "overwrite=true",
                     "--limit", "app01", inventory=tagged)
    finally:
        fleet.run("app01", f"mv {control}.away {control}")
    assert failed.returncode != 0
    assert re.search(r"\[app01\]\s+app01: restoring database tagged failed; the existing database is back as it was: "
                     r"exit 1", failed.stdout), failed.stdout
    assert fleet.run("app01", state).stdout == before  # the same database (oid), rows written after the backup kept
    names = "runuser -u postgres -- psql -XAtq -c 'select datname from pg_database order by 1'"
    assert "pbk-replaced" not in fleet.run("app01", names).stdout
    forced = run(setup, "tasks.data.restore_database", "job=data", "database=tagged", "overwrite=true",
                 "--limit", "app01", inventory=tagged)
    assert forced.returncode == 0, forced.stdout  # with the extension back, the overwrite goes through
    assert fleet.run("app01", state).stdout.split("|")[1] == "backed up\n"
    assert "pbk-replaced" not in fleet.run("app01", names).stdout  # the replaced database dropped once it worked
