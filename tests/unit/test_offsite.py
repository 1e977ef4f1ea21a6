"""pyinfra_backup/offsite.py and facts/offsite.py on a real borg repo here, copied to an rclone
`alias` remote (a local directory) defined by the environment; host data validation."""

from __future__ import annotations

import copy
import os
import subprocess

import pytest

from facts.offsite import OffsiteRepos
from pyinfra_backup import offsite as offsite_module
from pyinfra_backup.offsite import Fingerprint, Offsite, Record, copy_result, copy_script, fingerprint_command
from pyinfra_backup.shell import Section, parse_sections
from pyinfra_backup.validate import host_data_errors


def sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repos" / "host01"
    path.parent.mkdir()
    env = {**os.environ, "BORG_BASE_DIR": str(tmp_path / "borg"), "BORG_PASSPHRASE": ""}
    subprocess.run(["borg", "init", "--encryption", "none", str(path)], env=env, check=True, capture_output=True)
    return path


@pytest.fixture
def records(tmp_path, monkeypatch):
    monkeypatch.setattr(offsite_module, "RECORDS_DIR", str(tmp_path / "records"))
    return tmp_path / "records"


def local_offsite(tmp_path, **extra) -> Offsite:
    spec = {"type": "alias", "path": "borg", "options": {"remote": str(tmp_path / "vault")}, **extra}
    return Offsite.from_data({"borgbackup": {"offsite": spec}})


def fingerprint(path) -> Fingerprint:
    run = sh(fingerprint_command(str(path)))
    assert run.returncode == 0, run.stderr
    return Fingerprint.parse(run.stdout)


def test_fingerprint_follows_files_but_not_borgs_lock(repo, tmp_path):
    first = fingerprint(repo)
    files = [p for p in repo.rglob("*") if p.is_file()]
    assert first.files == len(files) and first.bytes == sum(p.stat().st_size for p in files)
    (repo / "lock.exclusive").mkdir()
    (repo / "lock.exclusive" / "host@123").write_text("")
    (repo / "lock.roster").write_text("{}")
    assert fingerprint(repo) == first
    os.utime(repo / "config", (1, 1))
    assert fingerprint(repo).digest != first.digest
    (tmp_path / "empty").mkdir()
    assert sh(fingerprint_command(str(tmp_path / "empty"))).returncode == offsite_module.NOT_A_REPO
    assert sh(fingerprint_command(str(tmp_path / "absent"))).returncode == offsite_module.NOT_A_REPO


def test_record_parse():
    record = Record.parse("abcd\n1764254696\nff00 12 3456\n")
    assert record.destination == "abcd" and record.fingerprint == Fingerprint("ff00", 12, 3456)
    assert record.time.isoformat() == "2025-11-27T14:44:56+00:00"
    assert Record.parse("") is None and Record.parse("a\nb\nc\n") is None


def test_identity_names_the_destination_not_the_secrets(tmp_path):
    base = local_offsite(tmp_path)
    assert local_offsite(tmp_path, secretCommands={"pass": "cat /x"}).identity == base.identity
    assert local_offsite(tmp_path, path="other").identity != base.identity
    assert local_offsite(tmp_path, options={"remote": "/elsewhere"}).identity != base.identity


def test_copy_script_mirrors_checks_and_records(repo, records, tmp_path):
    offsite = local_offsite(tmp_path)
    (repo / "lock.roster").write_text("{}")
    run = sh(copy_script(offsite, "host01", str(repo), "2026-01-01T000000Z"))
    result = copy_result(parse_sections(run.stdout.splitlines()))
    assert result.failed_step is None, run.stdout
    copied = tmp_path / "vault" / "borg" / "host01"
    assert sorted(p.relative_to(copied) for p in copied.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(repo) for p in repo.rglob("*") if p.is_file() and p.name != "lock.roster")
    assert result.stats["transfers"] == result.matching == fingerprint(repo).files
    record = Record.parse((records / "host01").read_text())
    assert record.destination == offsite.identity and record.fingerprint == fingerprint(repo)
    borg = subprocess.run(["borg", "check", str(copied)], capture_output=True, text=True,
                          env={**os.environ, "BORG_BASE_DIR": str(tmp_path / "borg2"), "BORG_PASSPHRASE": "",
                               "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
                               "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"})
    assert borg.returncode == 0, borg.stderr
    assert result.summary() == f"{result.matching} files copied ({result.stats['bytes'] / 1024:.1f} KiB), 0 deleted; " \
        f"rclone check: {result.matching} files match"


def test_a_deleted_file_goes_to_the_backup_dir(repo, records, tmp_path):
    offsite = local_offsite(tmp_path, backupDir="borg-deleted", extraArgs=["--transfers", "1"])
    assert offsite.extra_args == ("--transfers", "1")
    sh(copy_script(offsite, "host01", str(repo), "t1"))
    (repo / "README").unlink()
    run = sh(copy_script(offsite, "host01", str(repo), "t2"))
    assert copy_result(parse_sections(run.stdout.splitlines())).failed_step is None
    assert (tmp_path / "vault" / "borg-deleted" / "host01" / "t2" / "README").exists()
    assert not (tmp_path / "vault" / "borg" / "host01" / "README").exists()


def test_verify_size_checks_sizes_only(repo, records, tmp_path):
    script = copy_script(local_offsite(tmp_path, verify="size"), "host01", str(repo), "t")
    assert script.count("--size-only") == 1  # the check's, not the sync's
    run = sh(script)
    result = copy_result(parse_sections(run.stdout.splitlines()), "size")
    assert result.failed_step is None and not result.hashed and result.summary().endswith(" (sizes only)")
    assert copy_result(parse_sections(sh(copy_script(local_offsite(tmp_path), "host01", str(repo), "t")).stdout
                                      .splitlines())).hashed


def test_a_locked_repo_is_not_copied_nor_recorded(repo, records, tmp_path):
    (repo / "lock.exclusive").mkdir()
    run = sh(copy_script(local_offsite(tmp_path), "host01", str(repo), "t"))
    result = copy_result(parse_sections(run.stdout.splitlines()))
    assert result.failed_step == "lock" and "locked by a running borg" in result.reason
    assert not (tmp_path / "vault").exists() and not records.exists()


def test_a_repo_changed_during_the_copy_is_not_recorded(repo, records, tmp_path):
    offsite = local_offsite(tmp_path)
    script = copy_script(offsite, "host01", str(repo), "t")
    script = script.replace("echo '::pbk:: record';", f"touch {repo}/config; echo '::pbk:: record';", 1)
    result = copy_result(parse_sections(sh(script).stdout.splitlines()))
    assert result.failed_step == "record" and "changed during the copy" in result.reason
    assert not records.exists()


def test_an_unreachable_remote_stops_at_sync():
    sections = {"lock": Section(rc=0), "sync": Section(stderr=[
        '2026/11/27 14:45:45 Failed to create file system for "offsite:borg/r": NewFs: connection refused'], rc=1)}
    result = copy_result(sections)
    assert (result.failed_step, result.unreachable) == ("sync", True)
    assert result.reason == 'Failed to create file system for "offsite:borg/r": NewFs: connection refused'
    assert copy_result({"lock": Section(rc=0)}).reason == "did not run (the command was cut short)"


def test_fact_reads_fingerprints_and_records(repo, records, tmp_path):
    offsite = local_offsite(tmp_path)
    sh(copy_script(offsite, "host01", str(repo), "t"))
    (tmp_path / "empty").mkdir()
    fact = OffsiteRepos()
    output = sh(fact.command(repos={"host01": str(repo), "host02": str(tmp_path / "empty")})).stdout.splitlines()
    state = fact.process(output)
    assert state.rclone
    assert state.repos["host01"].record.fingerprint == state.repos["host01"].fingerprint == fingerprint(repo)
    assert state.repos["host02"].fingerprint is None and state.repos["host02"].error is None


# --- host data -------------------------------------------------------------------------------

SERVER = {"borgbackup": {"repos": {}, "offsite": {
    "type": "sftp", "path": "borg",
    "options": {"host": "vault", "user": "u", "port": 22, "key_file": "/k", "known_hosts_file": "/etc/ssh/ssh_known_hosts"},
    "secretCommands": {"key_file_pass": "cat /run/secrets/offsite"}, "backupDir": "borg-deleted",
    "extraArgs": ["--bwlimit", "10M"]}}}


def mutated(change) -> dict:
    data = copy.deepcopy(SERVER)
    change(data["borgbackup"], data["borgbackup"]["offsite"])
    return data


def test_valid_offsite_data():
    assert host_data_errors("backup", SERVER) == []


O = "backup: borgbackup.offsite"


@pytest.mark.parametrize(("change", "message"), [
    (lambda b, o: b.pop("repos"), "backup: borgbackup.repos: missing, expected a mapping of repo name to repo: "
                                  "borgbackup.offsite copies the repos of a backup server"),
    (lambda b, o: o["options"].pop("known_hosts_file"),
     f"{O}.options.known_hosts_file: missing, expected a known_hosts file on the server pinning the remote's "
     "host key (without it rclone does not check the host key)"),
    (lambda b, o: o["options"].update(key_file_pass="hunter2"),
     f"{O}.options.key_file_pass: invalid name: expected a non-secret rclone option name (secrets go in "
     "secretCommands), got 'key_file_pass'"),
    (lambda b, o: o.update(remote="off-site"),
     f"{O}.remote: expected a remote name (a letter, then letters, digits, _), got 'off-site'"),
    (lambda b, o: o.pop("path"), f"{O}.path: missing, expected a non-empty string"),
    (lambda b, o: o["secretCommands"].update(pass_=""),
     f"{O}.secretCommands.pass_: expected a shell command printing the secret, got ''"),
    (lambda b, o: o["options"].update(port=[22]),
     f"{O}.options.port: expected a string, integer or boolean, got a value (not shown)"),
    (lambda b, o: o.update(type="SFTP"), f"{O}.type: expected an rclone backend name, e.g. sftp, got 'SFTP'"),
    (lambda b, o: o.update(extraArgs="--bwlimit 10M"), f"{O}.extraArgs: expected a list of strings, got '--bwlimit 10M'"),
    (lambda b, o: o.update(verify="hash"), f"{O}.verify: expected full or size, got 'hash'"),
])
def test_bad_offsite_data(change, message):
    assert host_data_errors("backup", mutated(change)) == [message]


def test_a_secret_in_options_is_never_shown():
    errors = host_data_errors("backup", mutated(lambda b, o: o["options"].update({"key_pem": ["hunter2"], "pass": "hunter2"})))
    assert len(errors) == 3 and not any("hunter2" in line for line in errors)
