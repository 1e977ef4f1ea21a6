"""pyinfra_backup/rclone.py against the installed rclone: remotes from the environment, secrets, logs."""

from __future__ import annotations

import json
import subprocess

import pytest

from pyinfra_backup import rclone
from pyinfra_backup.rclone import Remote

SECRET = "s3cr3t pass'word $HOME"


def sh(script: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, **kwargs)


def test_password_options_are_those_rclone_obscures():
    providers = json.loads(subprocess.run(["rclone", "config", "providers"], capture_output=True, check=True).stdout)
    obscured = {}
    for backend in providers:
        names = {option["Name"] for option in backend["Options"] if option.get("IsPassword")}
        if names:
            obscured[backend["Name"]] = names
    assert obscured == rclone.PASSWORD_OPTIONS


def test_env_name_is_rclones():
    assert rclone.env_name("offsite", "key_file") == "RCLONE_CONFIG_OFFSITE_KEY_FILE"
    assert rclone.env_name("Off", "known-hosts") == "RCLONE_CONFIG_OFF_KNOWN_HOSTS"


def test_prelude_exports_plain_options_and_an_obscured_secret_that_rclone_reveals(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    remote = Remote("offsite", "sftp", {"host": "vault", "port": 2222, "set_modtime": True},
                    {"key_file_pass": f"cat {secret_file}"})
    script = remote.prelude()
    assert SECRET not in script and "s3cr3t" not in script
    run = sh(f"{script} && env")
    assert run.returncode == 0, run.stderr
    env = dict(line.split("=", 1) for line in run.stdout.splitlines() if line.startswith("RCLONE_CONFIG_"))
    assert env["RCLONE_CONFIG_OFFSITE_TYPE"] == "sftp"
    assert env["RCLONE_CONFIG_OFFSITE_HOST"] == "vault"
    assert env["RCLONE_CONFIG_OFFSITE_PORT"] == "2222"
    assert env["RCLONE_CONFIG_OFFSITE_SET_MODTIME"] == "true"
    obscured = env["RCLONE_CONFIG_OFFSITE_KEY_FILE_PASS"]
    assert obscured != SECRET
    revealed = subprocess.run(["rclone", "reveal", "--", obscured],  # "--": it may start with "-"
                              capture_output=True, text=True, check=True)
    assert revealed.stdout.strip() == SECRET


def test_a_secret_rclone_does_not_obscure_is_passed_as_is(tmp_path):
    remote = Remote("s3", "s3", {"provider": "Minio"}, {"secret_access_key": "printf 'abc def'"})
    run = sh(f"{remote.prelude()} && printf '%s' \"$RCLONE_CONFIG_S3_SECRET_ACCESS_KEY\"")
    assert run.stdout == "abc def"


@pytest.mark.parametrize(("command", "reason"), [
    ("false", "borgbackup.offsite.secretCommands.pass: the command failed (exit status 1)"),
    ("true", "borgbackup.offsite.secretCommands.pass: the command printed nothing"),
])
def test_a_failing_secret_command_stops_before_rclone(command, reason):
    remote = Remote("offsite", "sftp", {}, {"pass": command})
    run = sh(f"{remote.prelude()} && echo reached")
    assert run.returncode == 2 and "reached" not in run.stdout
    assert run.stderr.strip() == reason


def test_argv():
    assert rclone.sync_argv("/r", "o:b/r", ["/lock.roster"], "o:old/r/t", ["--bwlimit", "1M"]) == [
        "rclone", "sync", "/r", "o:b/r", "--config", "/dev/null", "--use-json-log", "-v", "--stats", "1h",
        "--bwlimit", "1M", "--exclude", "/lock.roster", "--backup-dir", "o:old/r/t"]
    assert rclone.check_argv("/r", "o:b/r") == [
        "rclone", "check", "/r", "o:b/r", "--config", "/dev/null", "--use-json-log", "--one-way"]


def test_sync_and_check_with_a_remote_from_the_environment_only(tmp_path):
    """A real run: an `alias` remote defined by the prelude, its log read back."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_bytes(b"x" * 1000)
    (tmp_path / "src" / "lock.roster").write_text("{}")
    remote = Remote("vault", "alias", {"remote": str(tmp_path / "dst")})
    sync = sh(rclone.command(remote, rclone.sync_argv(str(tmp_path / "src"), "vault:repo", ["/lock.roster"])))
    assert sync.returncode == 0, sync.stderr
    stats = rclone.sync_stats(sync.stderr.splitlines())
    assert (stats["transfers"], stats["bytes"], stats["deletes"]) == (1, 1000, 0)
    assert sorted(p.name for p in (tmp_path / "dst" / "repo").iterdir()) == ["a"]
    check = sh(rclone.command(remote, rclone.check_argv(str(tmp_path / "src"), "vault:repo", ["/lock.roster"])))
    assert check.returncode == 0 and rclone.counted(check.stderr.splitlines(), "matching files") == 1
    assert rclone.hashed(check.stderr.splitlines())
    (tmp_path / "dst" / "repo" / "a").write_bytes(b"y" * 1000)
    bad = sh(rclone.command(remote, rclone.check_argv(str(tmp_path / "src"), "vault:repo", ["/lock.roster"])))
    assert bad.returncode != 0
    assert rclone.failure(bad.stderr.splitlines()) == "a: md5 differ"
    again = sh(rclone.command(remote, rclone.sync_argv(str(tmp_path / "src"), "vault:repo", ["/lock.roster"])))
    assert rclone.sync_stats(again.stderr.splitlines())["transfers"] == 1  # same size, other mtime: copied


def test_a_check_without_a_common_hash_is_told():
    line = json.dumps({"level": "notice", "msg": "No common hash found - not using a hash for checks"})
    assert not rclone.hashed([line])


def test_failure_of_an_unreachable_remote_is_its_fatal_line():
    lines = ['2026/11/27 14:45:45 Failed to create file system for "offsite:borg/r": NewFs: couldn\'t connect SSH: '
             'dial tcp 10.213.2.1:2: connect: connection refused']
    assert rclone.failure(lines) == ('Failed to create file system for "offsite:borg/r": NewFs: couldn\'t connect '
                                     'SSH: dial tcp 10.213.2.1:2: connect: connection refused')
    assert rclone.sync_stats(lines) == {} and rclone.counted(lines, "matching files") is None


def test_failure_names_the_first_errors_and_counts_the_rest():
    lines = [json.dumps({"level": "error", "msg": "sizes differ", "object": f"data/0/{n}"}) for n in range(5)]
    assert rclone.failure(lines) == ("data/0/0: sizes differ; data/0/1: sizes differ; data/0/2: sizes differ "
                                     "(and 2 more)")
    assert rclone.failure([json.dumps({"level": "info", "msg": "Copied (new)"})]) is None


def test_describe_shows_plain_options_only():
    assert Remote("o", "sftp", {"host": "vault", "user": "u", "port": 2222}, {"pass": "cat x"}).describe() == \
        "sftp u@vault:2222"
    assert Remote("o", "s3", {"provider": "AWS"}).describe() == "s3"
