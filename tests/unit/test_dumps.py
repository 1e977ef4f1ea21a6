"""pyinfra_backup.dumps and data_restore: the job's data spec, the create script around borg (run here with
real borg, pg_dump and podman, podman on a store of its own under tmp_path), manifests and restore facts."""

from __future__ import annotations

import doctest
import json
import os
import secrets
import subprocess

import pytest

from pyinfra_backup import data_restore, dumps
from pyinfra_backup.borg import Job, Location
from pyinfra_backup.dumps import DataSpec, Database, Manifest, create_script
from pyinfra_backup.enrollment import PlannedJob
from pyinfra_backup.shell import sh_join

TREE = "cd {0} && find . -printf '%p %U %G %m %y %l\\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum"


def test_docstring_examples():
    assert doctest.testmod(dumps).failed == 0 and doctest.testmod(data_restore).failed == 0


def test_spec_defaults_files_and_host_data():
    spec = DataSpec.of_host("db", {"borgbackup": {"jobs": {"db": {
        "postgresqlDatabases": [{"name": "shop"}, {"name": "wiki", "user": "wiki", "format": "plain"},
                                {"name": "t", "format": "tar"}],
        "volumes": ["grafana"],
    }}}})
    assert spec.databases == (Database("shop"), Database("wiki", "wiki", "plain"), Database("t", "postgres", "tar"))
    assert [db.file for db in spec.databases] == ["postgresql/shop.dump", "postgresql/wiki.sql", "postgresql/t.tar"]
    assert spec.spool == "/var/lib/pyinfra-backup/spool/db" and spec.volumes == ("grafana",)
    assert not DataSpec.of_host("other", {"borgbackup": {"jobs": {"db": {}}}})
    assert not DataSpec.of_host("db", {})


def test_script_quotes_every_name_and_plain_dumps_carry_the_database():
    script = create_script(DataSpec("j", (Database("a$b", format="plain"),), ("v.1",)), "borg create R::x")
    assert "pg_dump --format=plain --create 'a$b' > \"$_s\"/'postgresql/a$b.sql'" in script
    assert "_r=$(_volume v.1)" in script and script.endswith('borg create R::x "$_s" "$@"\n)')
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0


def test_manifest_parse_and_dump_path():
    manifest = Manifest.parse(json.dumps({"version": 1, "job": "j", "spool": "/var/lib/pyinfra-backup/spool/j",
                                          "databases": {"shop": {"user": "postgres", "format": "custom",
                                                                 "file": "postgresql/shop.dump"}},
                                          "volumes": {}}))
    assert manifest.dump_path("shop") == "var/lib/pyinfra-backup/spool/j/postgresql/shop.dump"
    assert manifest.volumes == {}


# --- the scripts, run here ---------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path, monkeypatch):
    """A real borg repo, spool and restore markers under tmp_path, podman on a store of its own."""
    monkeypatch.setattr(dumps, "SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setattr(data_restore, "RESTORES_DIR", str(tmp_path / "restores"))
    (tmp_path / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path}/graph"\nrunroot = "{tmp_path}/run"\n')
    (tmp_path / "containers.conf").write_text(
        f'[engine]\ntmp_dir = "{tmp_path}/libpod"\nvolume_path = "{tmp_path}/volumes"\n')
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(tmp_path / "storage.conf"),
           "CONTAINERS_CONF": str(tmp_path / "containers.conf"), "BORG_BASE_DIR": str(tmp_path / "borg"),
           "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}
    repo = tmp_path / "repo"
    subprocess.run(["borg", "init", "-e", "none", str(repo)], env=env, check=True)
    job = Job.from_data("j", {"repo": str(repo), "encryption": {"mode": "none"}})

    def sh(command: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, check=check)

    return {"tmp": tmp_path, "repo": str(repo), "job": job, "sh": sh, "planned": PlannedJob(job, Location(str(repo)))}


def create(local, spec: DataSpec):
    borg = sh_join(["borg", "create", "--json", f"{local['repo']}::a-{secrets.token_hex(4)}"])
    return local["sh"](f"cd / && {create_script(spec, borg)}")


def archives(local) -> list[str]:
    return local["sh"](f"borg list --short {local['repo']}", check=True).stdout.split()


def test_a_failing_dump_stops_before_borg_and_leaves_no_spool(local):
    spool = local["tmp"] / "spool" / "j"
    spool.mkdir(parents=True)
    (spool / "left-by-a-killed-run.dump").write_text("old")
    name = f"pbk_unit_{secrets.token_hex(4)}"  # no such database, whether or not a server runs here
    run = create(local, DataSpec("j", (Database(name),)))
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines()[-1].startswith(
        f"postgresql database {name} (as postgres): pg_dump failed: pg_dump: error: ")
    assert archives(local) == [] and not spool.exists()


def test_an_unknown_volume_stops_before_borg_naming_it(local):
    run = create(local, DataSpec("j", (), ("pbk-unit-ghost",)))
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("volume pbk-unit-ghost: not found: podman: ") and "no such volume" in last
    assert archives(local) == [] and not (local["tmp"] / "spool" / "j").exists()


def test_a_volume_goes_into_the_archive_with_a_manifest_and_comes_back_identical(local):
    sh = local["sh"]
    sh("podman volume create pbk-unit-vol >/dev/null", check=True)
    mountpoint = sh("podman volume inspect --format '{{.Mountpoint}}' pbk-unit-vol", check=True).stdout.strip()
    sh(f"cd {mountpoint} && mkdir sub && echo hi > sub/a && chmod 0600 sub/a && chown 12:34 sub && "
       f"ln -s sub/a link && chown 5:6 . && chmod 0750 .", check=True)
    tree = sh(TREE.format(mountpoint), check=True).stdout

    run = create(local, DataSpec("j", (), ("pbk-unit-vol",)))
    assert run.returncode == 0, run.stderr
    [archive] = archives(local)
    assert json.loads(run.stdout)["archive"]["name"] == archive
    assert not (local["tmp"] / "spool" / "j").exists()
    manifest_text = sh(data_restore.manifest_command(local["planned"], archive), check=True).stdout
    manifest = Manifest.parse(manifest_text)
    assert manifest.volumes == {"pbk-unit-vol": {"engine": "podman", "mountpoint": mountpoint,
                                                 "uid": 5, "gid": 6, "mode": "750"}}

    sh("podman volume rm pbk-unit-vol >/dev/null", check=True)
    restore = data_restore.restore_volume_command(local["planned"], archive, manifest, "pbk-unit-vol", "podman",
                                                  create=True)
    done = sh(restore)
    assert done.returncode == 0, done.stderr
    assert sh(TREE.format(mountpoint), check=True).stdout == tree
    marker = (local["tmp"] / "restores" / "volume" / "j" / "pbk-unit-vol").read_text()
    assert data_restore.parse_marker(marker) == (archive, "2")  # sub and link


def test_volume_and_database_facts_parse_their_sections():
    def section(name, stdout, rc, stderr=""):
        return [f"::pbk:: {name}", *stdout, f"::pbk:: {name} stderr", *([stderr] if stderr else []),
                f"::pbk:: {name} rc {rc}"]

    manifest = '{"version": 1, "job": "j", "spool": "/s", "databases": {}, "volumes": {"v": {"engine": "podman", "uid": 0, "gid": 0, "mode": "755"}}}'
    volume = data_restore.parse_volume([
        *section("manifest", [manifest], 0), *section("volume", ["podman /var/lib/v/_data", "4"], 0),
        *section("engines", ["podman", "docker"], 0), *section("marker", ["arch-1 4"], 0)])
    assert (volume.engine, volume.mountpoint, volume.entries, volume.engines) == ("podman", "/var/lib/v/_data", 4,
                                                                                 ("podman", "docker"))
    assert volume.restored == ("arch-1", "4") and volume.error is volume.manifest_error is None
    assert "v" in volume.manifest.volumes
    missing = data_restore.parse_database([
        *section("manifest", [], 1, "Include pattern 'x' never matched."),
        *section("database", [], data_restore.MISSING), *section("marker", [], 1, "No such file")])
    assert (missing.manifest, missing.oid, missing.restored, missing.error, missing.manifest_error) == (None,) * 5
    down = data_restore.parse_database([
        *section("manifest", [], 2, "Repository /r does not exist."),
        *section("database", [], 2, 'psql: error: connection to server on socket "/run/postgresql/.s.PGSQL.5432" '
                                     "failed: No such file or directory"), *section("marker", [], 1)])
    assert down.error.startswith("cannot query PostgreSQL: psql: error: connection to server")
    assert down.manifest_error == "cannot read the archive's manifest: Repository /r does not exist."


@pytest.mark.parametrize("field, value", [("uid", "0; touch /tmp/owned"), ("uid", -1), ("gid", "1000"), ("gid", 1.5),
                                          ("uid", True), ("gid", None), ("mode", "0755; id"), ("mode", 755.0)])
def test_a_volume_owner_or_mode_from_an_archive_that_is_not_a_number_is_refused_naming_the_field(field, value):
    entry = {"engine": "podman", "mountpoint": "/var/lib/v/_data", "uid": 999, "gid": 999, "mode": "750", field: value}
    text = json.dumps({"version": 1, "job": "j", "spool": "/s", "databases": {}, "volumes": {"v": entry}})
    with pytest.raises(ValueError, match=rf"^volumes\.v\.{field}: expected "):
        Manifest.parse(text)
    state = data_restore.parse_volume(["::pbk:: manifest", text, "::pbk:: manifest stderr", "::pbk:: manifest rc 0",
                                       "::pbk:: volume", "::pbk:: volume stderr", f"::pbk:: volume rc {data_restore.MISSING}",
                                       "::pbk:: engines", "podman", "::pbk:: engines stderr", "::pbk:: engines rc 0",
                                       "::pbk:: marker", "::pbk:: marker stderr", "::pbk:: marker rc 1"])
    assert state.manifest is None
    assert state.manifest_error.startswith(f"invalid manifest.json: volumes.v.{field}: expected "), state.manifest_error
    assert state.manifest_error.endswith("nothing was restored")
