"""System state helpers (pyinfra_backup/state.py): the digest script, parsing, the state archive
command and the restore script, run here with the real sh, find, sha256sum and borg."""

from __future__ import annotations

import fnmatch
import os
from datetime import datetime, timezone
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from pyinfra_backup.borg import Archive, Job, RepoListing, archive_glob, create_argv
from pyinfra_backup.records import job_dir
from pyinfra_backup.shell import with_env
from pyinfra_backup.state import (
    DEFAULT_PATHS, Entry, StateSettings, archive_script, copy_key, digest_script, follow_up, parse_archive_output,
    parse_digest_output, parse_filemode, parse_record, restore_plan, restore_script, roots_of, snapshot_command,
    state_base, state_digest, state_glob,
)

BORG_ENV = {"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "TZ": "UTC"}
UNREADABLE = "/proc/sys/net/ipv4/route/flush"  # mode 0200: not readable even by root


def digest_of(patterns, cwd=None, literal=False):
    run = subprocess.run(["sh", "-c", digest_script(patterns, literal=literal)], cwd=cwd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return parse_digest_output(run.stdout.splitlines(), run.stderr.splitlines())


@pytest.fixture
def tree(tmp_path):
    """A small identity tree: files with owners and modes, a directory, a symlink, odd names."""
    root = tmp_path / "live"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "var/lib/nixos").mkdir(parents=True)
    (root / "var/lib/bluetooth/AA:BB").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    key = root / "etc/ssh/ssh_host_ed25519_key"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    key.chmod(0o600)
    (root / "etc/ssh/ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAA root@h\n")
    (root / "var/lib/nixos/uid-map").write_text('{"alice": 1000}\n')
    (root / "var/lib/bluetooth/AA:BB/settings file").write_text("[General]\n")
    os.chown(root / "var/lib/bluetooth/AA:BB", 1234, 2345)
    (root / "var/lib/bluetooth/AA:BB").chmod(0o2750)
    (root / "var/lib/nixos/link").symlink_to("uid-map")
    return root


def test_settings_defaults_and_job():
    one = {"borgbackup": {"jobs": {"system": {}}}}
    assert StateSettings.from_data(one) is None  # no system_state: no snapshots
    settings = StateSettings.from_data({**one, "system_state": {}})
    assert settings.paths == DEFAULT_PATHS and settings.job == "system" and settings.age_dir == "recovery"
    two = {"borgbackup": {"jobs": {"a": {}, "b": {}}}, "system_state": {"job": "b", "paths": ["/etc/machine-id"]}}
    assert StateSettings.from_data(two).job == "b" and StateSettings.from_data(two).paths == ("/etc/machine-id",)
    assert StateSettings.from_data({**two, "system_state": {}}).job is None


def test_digest_script_expands_globs_skips_missing_and_reads_every_entry(tree):
    entries, roots, skipped, unreadable = digest_of(
        [f"{tree}/etc/ssh/ssh_host_*", f"{tree}/etc/machine-id", f"{tree}/var/lib/nixos", f"{tree}/var/lib/bluetooth",
         f"{tree}/var/lib/NetworkManager", f"{tree}/nothing-*", f"{tree}/var/lib/nixos/uid-map"])
    rel = str(tree).lstrip("/")
    assert roots == tuple(f"{tree}/{p}" for p in ["etc/machine-id", "etc/ssh/ssh_host_ed25519_key",
                                                   "etc/ssh/ssh_host_ed25519_key.pub", "var/lib/bluetooth",
                                                   "var/lib/nixos"])  # uid-map is inside var/lib/nixos
    assert skipped == (f"{tree}/var/lib/NetworkManager", f"{tree}/nothing-*") and unreadable == ()
    key = entries[f"{rel}/etc/ssh/ssh_host_ed25519_key"]
    assert (key.type, key.uid, key.gid, key.mode) == ("f", 0, 0, 0o600) and len(key.sha256) == 64
    assert entries[f"{rel}/var/lib/nixos/link"].target == "uid-map"
    owned = entries[f"{rel}/var/lib/bluetooth/AA:BB"]
    assert (owned.type, owned.uid, owned.gid, owned.mode) == ("d", 1234, 2345, 0o2750)
    assert f"{rel}/var/lib/bluetooth/AA:BB/settings file" in entries


def test_digest_follows_content_owner_and_mode_not_times(tree):
    def digest():
        return state_digest(digest_of([f"{tree}/etc", f"{tree}/var"])[0].values())

    first = digest()
    os.utime(tree / "etc/machine-id", (0, 0))
    assert digest() == first
    changes = [
        lambda: (tree / "etc/ssh/ssh_host_ed25519_key").write_text("rotated\n"),
        lambda: (tree / "etc/ssh/ssh_host_ed25519_key").chmod(0o640),
        lambda: os.chown(tree / "var/lib/nixos/uid-map", 0, 100),
        lambda: ((tree / "var/lib/nixos/link").unlink(), (tree / "var/lib/nixos/link").symlink_to("gid-map")),
        lambda: (tree / "etc/ssh/new\nline").write_text("x"),
    ]
    seen = {first}
    for change in changes:
        change()
        now = digest()
        assert now not in seen
        seen.add(now)


def test_an_unreadable_file_is_named(tree):
    if not os.path.exists(UNREADABLE):
        pytest.fail(f"{UNREADABLE} is missing on this kernel: pick another file root cannot read")
    _, roots, _, unreadable = digest_of([f"{tree}/etc/machine-id", UNREADABLE])
    assert UNREADABLE in roots
    assert unreadable == (f"sha256sum: {UNREADABLE}: Permission denied",)


def test_literal_paths_are_not_expanded(tree):
    (tree / "etc/ssh/star*").write_text("literal")
    entries, roots, *_ = digest_of([f"{tree}/etc/ssh/star*"], literal=True)
    assert roots == (f"{tree}/etc/ssh/star*",) and len(entries) == 1


@given(st.integers(min_value=0, max_value=0o7777), st.sampled_from([stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK]))
def test_parse_filemode_inverts_borgs_mode_strings(mode, kind):
    assert parse_filemode(stat.filemode(kind | mode)) == mode


def entry(path, kind="f", uid=0, gid=0, mode=0o600, sha="a" * 64, target=""):
    return Entry(path, kind, uid, gid, mode, sha if kind == "f" else "", target)


def test_restore_plan_order_and_what_counts_as_equal():
    archived = {e.path: e for e in [
        entry("var/lib/bluetooth", "d", mode=0o700), entry("var/lib/bluetooth/x"),
        entry("etc/ssh/ssh_host_ed25519_key"), entry("etc/ssh/ssh_host_ed25519_key.pub", mode=0o644),
        entry("etc/machine-id", mode=0o444), entry("var/lib/nixos", "d", mode=0o755),
        entry("var/lib/nixos/uid-map", mode=0o644), entry("var/lib/nixos/l", "l", mode=0o777, target="uid-map"),
    ]}
    plan = [e.path for e in restore_plan(archived, {})]
    assert plan == ["etc/machine-id", "var/lib/nixos", "var/lib/nixos/l", "var/lib/nixos/uid-map",
                    "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub",
                    "var/lib/bluetooth", "var/lib/bluetooth/x"]
    live = dict(archived)
    live["var/lib/nixos/l"] = entry("var/lib/nixos/l", "l", mode=0o755, target="uid-map")  # a link's mode is moot
    live["etc/ssh/ssh_host_ed25519_key"] = entry("etc/ssh/ssh_host_ed25519_key", mode=0o644)
    live["extra"] = entry("extra")  # live files the archive does not hold are left alone
    assert [e.path for e in restore_plan(archived, live)] == ["etc/ssh/ssh_host_ed25519_key"]
    assert roots_of(archived) == ["/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key",
                                  "/etc/ssh/ssh_host_ed25519_key.pub", "/var/lib/bluetooth", "/var/lib/nixos"]


def test_follow_up_says_what_must_follow():
    notes = " | ".join(follow_up([entry("etc/ssh/ssh_host_rsa_key"), entry("var/lib/nixos/uid-map"),
                                  entry("etc/machine-id")]))
    assert "restart sshd" in notes and "before the first switch" in notes and "reboot" in notes
    assert follow_up([entry("srv/other")]) == []


def test_prune_and_freshness_leave_state_archives_alone():
    job = Job.from_data("system", {"repo": "/r", "encryption": {"mode": "none"}, "paths": ["/etc"]})
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    names = ["h-system-2026-01-01T00:00:00", "h-system-state-2026-01-01T00:00:01", "h-system-2026-01-02T00:00:00.checkpoint"]
    listing = RepoListing(exists=True, archives=tuple(Archive(n, when) for n in names))
    assert [n for n in names if fnmatch.fnmatchcase(n, archive_glob("h-system"))] == [names[0], names[2]]  # borg prune
    assert [a.name for a in listing.prune_candidates(job, "h-system")] == [names[0], names[2]]
    assert [a.name for a in listing.job_archives("h-system")] == [names[0]]  # freshness
    assert [n for n in names if fnmatch.fnmatchcase(n, state_glob("h-system"))] == [names[1]]


def test_copy_key_follows_files_and_recipients_not_comments():
    one = copy_key("d" * 64, ["ssh-ed25519 AAAA me@a", "age1xyz"])
    assert one == copy_key("d" * 64, ["age1xyz", "ssh-ed25519 AAAA other-comment"])
    assert one != copy_key("e" * 64, ["age1xyz", "ssh-ed25519 AAAA"]) != copy_key("d" * 64, ["age1xyz"])


@pytest.fixture
def repo(tmp_path):
    env = {**os.environ, **BORG_ENV, "BORG_BASE_DIR": str(tmp_path / "borg-home")}
    subprocess.run(["borg", "init", "--encryption", "none", str(tmp_path / "repo")], env=env, check=True)
    return tmp_path / "repo", env


@pytest.fixture
def job_name():
    name = f"unit-state-{secrets.token_hex(4)}"
    yield name
    shutil.rmtree(job_dir(name), ignore_errors=True)


def test_snapshot_command_records_the_digest_only_when_borg_succeeds(tree, repo, job_name):
    url, env = repo
    job = Job.from_data(job_name, {"repo": str(url), "encryption": {"mode": "none"}, "paths": [str(tree / "etc")]})
    run_env = {k: v for k, v in env.items() if k.startswith("BORG_")}
    create = with_env(run_env, create_argv(job, state_base("h-system"), str(url)))
    done = subprocess.run(["sh", "-c", snapshot_command(job_name, create, "d" * 64)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    record = parse_record(Path(job_dir(job_name), "last-state.json").read_text())
    assert record["digest"] == "d" * 64 and record["create"]["archive"]["name"].startswith("h-system-state-20")
    broken = with_env(run_env, create_argv(job, state_base("h-system"), str(url) + "-missing"))
    failed = subprocess.run(["sh", "-c", snapshot_command(job_name, broken, "e" * 64)], env=env, capture_output=True, text=True)
    assert failed.returncode == 2 and "does not exist" in failed.stderr
    assert parse_record(Path(job_dir(job_name), "last-state.json").read_text())["digest"] == "d" * 64
    assert not Path(job_dir(job_name), "last-state.json.tmp").exists()


def test_archive_listing_and_restore_script_put_back_exact_bytes_owner_and_mode(tree, repo, tmp_path):
    url, env = repo
    run_env = {k: v for k, v in env.items() if k.startswith("BORG_")}
    paths = ["etc/machine-id", "etc/ssh", "var/lib/nixos", "var/lib/bluetooth"]
    subprocess.run(["borg", "create", f"{url}::h-system-state-2026-01-01T00:00:00", *paths], cwd=tree, env=env, check=True)
    subprocess.run(["borg", "create", f"{url}::h-system-2026-01-02T00:00:00", "etc"], cwd=tree, env=env, check=True)
    borg = with_env(run_env, ["borg"])
    listed = subprocess.run(["sh", "-c", archive_script(borg, str(url), "h-system", "latest")], env=env,
                            capture_output=True, text=True, check=True)
    names, archived = parse_archive_output(listed.stdout.splitlines())
    assert names == ["h-system-state-2026-01-01T00:00:00"]  # not the job's data archive
    assert state_glob("h-system") == "h-system-state-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*"

    def live():
        return digest_of(paths, cwd=tree, literal=True)[0]

    before = live()
    assert restore_plan(archived, before) == []
    # wipe and damage: a rotated key, a lost machine-id, a file where a directory was, a mode, an owner
    (tree / "etc/ssh/ssh_host_ed25519_key").write_text("a new key\n")
    (tree / "etc/machine-id").unlink()
    shutil.rmtree(tree / "var/lib/bluetooth/AA:BB")
    (tree / "var/lib/bluetooth/AA:BB").write_text("not a directory\n")
    (tree / "var/lib/nixos/uid-map").chmod(0o666)
    os.chown(tree / "etc/ssh/ssh_host_ed25519_key.pub", 1, 1)
    todo = restore_plan(archived, live())
    assert [e.path for e in todo] == ["etc/machine-id", "var/lib/nixos/uid-map", "etc/ssh/ssh_host_ed25519_key",
                                      "etc/ssh/ssh_host_ed25519_key.pub", "var/lib/bluetooth/AA:BB",
                                      "var/lib/bluetooth/AA:BB/settings file"]
    extract = with_env(run_env, ["borg", "extract", "--numeric-ids", f"{url}::{names[-1]}"])
    work = tmp_path / "work"
    run = subprocess.run(["sh", "-c", restore_script(todo, extract, "T1", root=str(tree), work=str(work))],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert live() == before
    assert (tree / "etc/ssh/ssh_host_ed25519_key").read_text() == "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n"
    assert (work / "replaced-T1/etc/ssh/ssh_host_ed25519_key").read_text() == "a new key\n"  # nothing lost
    assert (work / "replaced-T1/var/lib/bluetooth/AA:BB").read_text() == "not a directory\n"
    assert not (work / "staging-T1").exists() and stat.S_IMODE(work.stat().st_mode) == 0o700
    assert restore_plan(archived, live()) == []
