"""borg argv/env building and output parsing."""

import json
import shlex

from pyinfra_backup.borg import (
    Job, Location, borg_env, check_argv, create_argv, explain_error, explain_errors, parse_interval, parse_list, prune_argv,
)
from pyinfra_backup.shell import atomic_write, parse_sections, sectioned_script, with_env
from tests.unit.seed import SEED_JOB

SEED = {**SEED_JOB, "exclude": ["*.pyc"]}


def test_defaults_follow_nixos():
    job = Job.from_data("system", {"repo": "/srv/r", "paths": "/etc", "encryption": {"mode": "none"}})
    assert job.paths == ("/etc",) and job.compression == "auto,zstd" and job.start_at == ("daily",)
    assert job.do_init and job.fail_on_warnings and job.start_at == ("daily",)
    assert Job.from_data("x", {"repo": "/r", "encryption": {"mode": "none"}, "startAt": []}).start_at == ()
    assert job.base_name("host01") == "host01-system"


def test_create_argv():
    job = Job.from_data("system", SEED)
    argv = create_argv(job, "h-system", "borg@b:.", lock_wait=5)
    assert argv == [
        "borg", "create", "--lock-wait", "5", "--compression", "auto,lzma", "--exclude", "*.pyc", "--json",
        "borg@b:.::h-system-{utcnow:%Y-%m-%dT%H:%M:%S}", "/home", "/var/lib", "/etc/nixos",
    ]


def test_prune_argv_matches_only_this_jobs_archives():
    job = Job.from_data("system", SEED)
    argv = prune_argv(job, "h-system", "REPO")
    assert argv == ["borg", "prune", "--glob-archives", "h-system-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*",
                    "--keep-daily=7", "--keep-weekly=4", "--keep-monthly=6", "REPO"]


def test_check_argv_verify_data():
    job = Job.from_data("system", {**SEED, "checks": {"frequency": "30d", "verifyData": True}})
    assert check_argv(job, "R") == ["borg", "check", "--verify-data", "R"]
    assert parse_interval("30d").total_seconds() == 30 * 86400 and parse_interval("12h").total_seconds() == 43200


def test_passphrase_only_through_passcommand_or_fd():
    job = Job.from_data("system", SEED)
    env = borg_env(job, Location("borg@b:.", "ssh -i k"))
    assert env["BORG_PASSCOMMAND"] == "cat /run/secrets/borg-passphrase" and env["BORG_RSH"] == "ssh -i k"
    assert "BORG_PASSPHRASE" not in env
    fd_env = borg_env(job, Location("x"), {"BORG_PASSPHRASE_FD": "5"})
    assert "BORG_PASSCOMMAND" not in fd_env and fd_env["BORG_PASSPHRASE_FD"] == "5"


def test_every_value_is_quoted():
    line = with_env({"BORG_PASSCOMMAND": "cat '/run/my secret'"}, ["borg", "list", "repo; rm -rf /"])
    assert line == "BORG_PASSCOMMAND='cat '\"'\"'/run/my secret'\"'\"'' borg list 'repo; rm -rf /'"


def test_parse_list():
    out = json.dumps({"archives": [{"name": "h-s-2026-11-27T10:00:00", "start": "2026-11-27T10:00:00.000000", "id": "ab"}],
                      "encryption": {"mode": "repokey-blake2"}, "repository": {"id": "1234"}})
    listing = parse_list(out, 0, "")
    assert listing.exists and listing.encryption == "repokey-blake2" and listing.archives[0].time.tzinfo
    assert parse_list("", 2, "Repository /x does not exist.").exists is False
    wrong = parse_list("", 2, "passphrase supplied in BORG_PASSCOMMAND is incorrect.")
    assert not wrong.exists and wrong.error.startswith("wrong passphrase")


def test_explain_error():
    assert explain_error("Failed to create/acquire the lock /r/lock.exclusive (timeout).").startswith("the repo is locked")
    assert explain_error("Host key verification failed.").startswith("the server's SSH host key")
    assert explain_error("Connection closed by remote host").startswith("the repo server is unreachable")
    assert explain_error("something else") == "something else"
    assert explain_error("OSError: [Errno 28] No space left on device").startswith("the repo server's filesystem is full")
    assert explain_error("BrokenPipeError: [Errno 32] Broken pipe").startswith("the connection to the repo server was lost")


def test_explain_errors_takes_the_first_line_with_a_reason():
    assert explain_errors(["Local thing", "OSError: [Errno 28] No space left on device", "BrokenPipeError: x"]).startswith(
        "the repo server's filesystem is full")
    assert explain_errors(["a", "b"]) == "b" and explain_errors([]) == ""


def test_sections_round_trip(tmp_path):
    import subprocess

    script = sectioned_script({"a": "echo one; echo two", "b": "echo oops >&2; exit 4", "c": "true"})
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    sections = parse_sections(out)
    assert sections["a"].stdout == ["one", "two"] and sections["a"].rc == 0
    assert sections["b"].rc == 4 and sections["b"].error == "oops" and not sections["b"].ok
    assert sections["c"].ok and sections["c"].stdout == []


def test_atomic_write(tmp_path):
    import subprocess

    target = tmp_path / "known hosts"
    subprocess.run(["sh", "-c", atomic_write(str(target), "a 'b'\nc\n", "0600")], check=True)
    assert target.read_text() == "a 'b'\nc\n" and oct(target.stat().st_mode)[-3:] == "600"
    assert [p.name for p in tmp_path.iterdir()] == ["known hosts"]


def test_nixos_extra_args_strings_are_split_and_extra_args_go_to_every_call():
    job = Job.from_data("s", {**SEED, "extraArgs": "--remote-path borg1", "extraCreateArgs": "--stats --one-file-system"})
    argv = create_argv(job, "b", "R")
    assert argv[:3] == ["borg", "--remote-path", "borg1"] and "--one-file-system" in argv and "--stats" in argv
    assert prune_argv(job, "b", "R")[:4] == ["borg", "--remote-path", "borg1", "prune"]


def test_prune_prefix_default_keeps_to_the_job_and_a_custom_one_is_honoured():
    default = Job.from_data("s", {**SEED, "prune": {"keep": {"daily": 1}, "prefix": "h-s"}})
    assert "h-s-[0-9]" in prune_argv(default, "h-s", "R")[3]
    custom = Job.from_data("s", {**SEED, "prune": {"keep": {"daily": 1}, "prefix": "legacy-"}})
    assert prune_argv(custom, "h-s", "R")[2:4] == ["--glob-archives", "legacy-*"]


def test_create_command_records_success_and_failure(tmp_path, monkeypatch):
    import subprocess

    from pyinfra_backup import records

    monkeypatch.setattr(records, "JOBS_DIR", str(tmp_path))
    ok = records.create_command("sys", 'echo \'{"archive": {"name": "a"}}\'', accept_warnings=False)
    assert subprocess.run(["sh", "-c", ok]).returncode == 0
    texts = {key: (tmp_path / "sys" / name).read_text() for key, name in records.FILES.items() if (tmp_path / "sys" / name).exists()}
    parsed = records.parse_records(texts)
    assert parsed.create == {"archive": {"name": "a"}} and parsed.attempt.ok

    warn = records.create_command("sys", "sh -c \"echo '{}'; echo 'file changed' >&2; exit 1\"", accept_warnings=True)
    assert subprocess.run(["sh", "-c", warn]).returncode == 0  # failOnWarnings false: a warning is a success
    assert records.parse_attempt((tmp_path / "sys" / "last-attempt").read_text()).ok

    failing = records.create_command("sys", "sh -c \"echo 'Failed to create/acquire the lock x (timeout).' >&2; exit 2\"", False)
    assert subprocess.run(["sh", "-c", failing], capture_output=True).returncode == 2
    attempt = records.parse_attempt((tmp_path / "sys" / "last-attempt").read_text())
    assert attempt.rc == 2 and "acquire the lock" in attempt.error
    assert records.parse_records({"create": (tmp_path / "sys" / "last-create.json").read_text()}).create == {}  # a failure keeps the last good record


def test_create_command_initialises_a_repo_borg_reports_missing_and_nothing_else(tmp_path, monkeypatch):
    """Real borg, local repos: the first create of a new host initialises a missing repo itself."""
    import json
    import subprocess
    import time

    from pyinfra_backup import records
    from pyinfra_backup.borg import Location, borg_env, create_argv, init_argv
    from pyinfra_backup.shell import with_env

    monkeypatch.setattr(records, "JOBS_DIR", str(tmp_path / "jobs"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("x")
    job = Job.from_data("sys", {"paths": [str(tmp_path / "data")], "repo": str(tmp_path / "repo"),
                                "encryption": {"mode": "none"}, "startAt": "daily"})
    location = Location(job.repo)
    env = {**borg_env(job, location), "BORG_BASE_DIR": str(tmp_path / "borg")}
    command = records.create_command(
        "sys", with_env(env, create_argv(job, "h-sys", location.url)), accept_warnings=False,
        init_if_missing=with_env(env, init_argv(job, location)))
    for attempt in range(2):  # missing repo: init then create; existing repo: create only
        time.sleep(1.1 * attempt)  # archive names are by the second
        assert subprocess.run(["sh", "-c", command], capture_output=True).returncode == 0
    listing = subprocess.run(["borg", "list", "--json", str(tmp_path / "repo")], env={**env, "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, check=True)
    assert len(json.loads(listing.stdout)["archives"]) == 2

    bad = with_env(env, ["borg", "create", "--compression", "bogus", f"{tmp_path}/repo::x", str(tmp_path / "data")])
    failing = records.create_command("sys", bad, False, init_if_missing=f"touch {tmp_path}/init-ran")
    assert subprocess.run(["sh", "-c", failing], capture_output=True).returncode == 2
    assert not (tmp_path / "init-ran").exists()  # another failure than a missing repo: no init


def test_a_failed_create_records_the_error_not_borgs_crash_report(tmp_path, monkeypatch):
    import subprocess

    from pyinfra_backup import records

    monkeypatch.setattr(records, "JOBS_DIR", str(tmp_path))
    crash = ("Local Exception\nTraceback (most recent call last):\n  File \"x.py\", line 1, in put\n"
             "OSError: [Errno 28] No space left on device\n\nPlatform: Linux host01\nBorg: 1.2.4\n"
             "Borg server: sys.argv: ['borg', 'serve']\nPID: 248  CWD: /\nsys.argv: ['borg', 'create']\n"
             "SSH_ORIGINAL_COMMAND: None\n\n")
    failing = records.create_command("sys", shlex.join(["sh", "-c", f"printf %s {shlex.quote(crash)} >&2; exit 2"]), False)
    shown = subprocess.run(["sh", "-c", failing], capture_output=True, text=True)
    attempt = records.parse_attempt((tmp_path / "sys" / "last-attempt").read_text())
    assert attempt.error == "OSError: [Errno 28] No space left on device" == shown.stderr.strip()


def test_operator_borg_ignores_the_borg_variables_of_the_operators_shell(tmp_path, monkeypatch):
    """Real borg, a local repo: the operator's shell has BORG_PASSPHRASE, BORG_PASSCOMMAND, BORG_REPO,
    BORG_RSH and BORG_BASE_DIR of its own; borg started by tasks.operator reads the passphrase from its pipe."""
    import subprocess

    from pyinfra_backup.borg import OPERATOR_BASE_DIR_VAR, list_argv, operator_env
    from pyinfra_backup.enrollment import PlannedJob
    from tasks import operator

    repo, base = tmp_path / "repo", tmp_path / "operator-borg"
    subprocess.run(["borg", "init", "--encryption", "repokey-blake2", str(repo)], check=True, capture_output=True,
                   env={"PATH": "/usr/bin:/bin", "BORG_PASSPHRASE": "right", "BORG_BASE_DIR": str(base)})
    shell = {"BORG_PASSPHRASE": "wrong", "BORG_PASSCOMMAND": "echo wrong", "BORG_REPO": "/nonexistent",
             "BORG_RSH": "false", "BORG_KEY_FILE": "/nonexistent", "BORG_BASE_DIR": str(tmp_path / "not-this-one")}
    for key, value in {**shell, OPERATOR_BASE_DIR_VAR: str(base)}.items():
        monkeypatch.setenv(key, value)
    env = operator_env({"PATH": "/bin", "HOME": "/root", "LANG": "C.UTF-8", **shell, OPERATOR_BASE_DIR_VAR: str(base)},
                       {"TZ": "UTC", "BORG_PASSPHRASE_FD": "5"})
    assert env == {"PATH": "/bin", "HOME": "/root", "LANG": "C.UTF-8", OPERATOR_BASE_DIR_VAR: str(base),
                   "BORG_BASE_DIR": str(base), "TZ": "UTC", "BORG_PASSPHRASE_FD": "5"}
    job = Job.from_data("sys", {"paths": ["/etc"], "repo": str(repo), "startAt": "daily",
                                "encryption": {"mode": "repokey-blake2", "passCommand": "unused"}})
    planned = PlannedJob(job, Location(str(repo)))
    out = operator.run_borg(planned, planned.location, list_argv(job, planned.location), b"right")
    assert json.loads(out)["archives"] == []
    assert (base / ".config/borg/security").is_dir() and not (tmp_path / "not-this-one").exists()


def test_archive_paths_as_the_command_line_gives_them():
    from pyinfra_backup.borg import archive_paths

    assert archive_paths(None) == ()
    assert archive_paths("/etc/motd") == ("etc/motd",)  # one string from pyinfra's CLI, not its characters
    assert archive_paths("/etc/motd, etc/hosts,,/etc/motd") == ("etc/motd", "etc/hosts")
    assert archive_paths(["/srv/a b", "srv/c"]) == ("srv/a b", "srv/c")
    assert archive_paths(["/"]) == ()  # the whole archive
