"""The host's side of relayed restores and of the config checkout, run by a real sh, tar and git."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from datetime import datetime, timezone

import pytest

from pyinfra_backup import relay
from pyinfra_backup.borg import Archive, RepoListing
from pyinfra_backup.recovery import Step, Summary, bundle_argv, checkout_script, resolve_argv


def _listing(*names):
    at = datetime(2026, 11, 27, tzinfo=timezone.utc)
    return RepoListing(exists=True, archives=tuple(Archive(n, at.replace(hour=i)) for i, n in enumerate(names)))


def test_pick_archive_latest_state_or_a_name():
    listing = _listing("h-s-2026-11-27T01:00:00", "h-s-state-2026-11-27T02:00:00", "h-s-2026-11-27T03:00:00",
                       "h-s-2026-11-27T04:00:00.checkpoint", "other-2026-11-27T05:00:00")
    assert relay.pick_archive(listing, "h-s", "latest") == "h-s-2026-11-27T03:00:00"
    assert relay.pick_archive(listing, "h-s", "state") == "h-s-state-2026-11-27T02:00:00"
    assert relay.pick_archive(listing, "h-s", "other-2026-11-27T05:00:00") == "other-2026-11-27T05:00:00"
    with pytest.raises(ValueError, match="no archive 'nope' in the repo"):
        relay.pick_archive(listing, "h-s", "nope")
    with pytest.raises(ValueError, match=r"no state archive named nixos-s-state-<timestamp> .*pass archive=NAME"):
        relay.pick_archive(listing, "nixos-s", "state")  # a fresh install's default hostname


def _tar(files: dict[str, tuple[bytes, int, int]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, (data, mode, uid) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, uid
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _unpack(stream: bytes, target, archive: str, marker, sha256: str | None = None, umask: str = ""):
    """The relay's two phases as the operator runs them: stage the stream, then commit it with the
    digest the operator computed (`sha256`, default the stream's own). -> (stage run, commit run or None)."""
    import hashlib

    stage = f"{relay.RELAY_DIR}/stage.test"
    staged = subprocess.run(["sh", "-c", umask + relay.stage_script(stage)], input=stream, capture_output=True)
    if staged.returncode != 0:
        return staged, None
    digest = sha256 or hashlib.sha256(stream).hexdigest()
    assert staged.stdout.decode().split() == ["staged", hashlib.sha256(stream).hexdigest()]
    script = relay.commit_script(stage, digest, str(target), archive, str(marker))
    return staged, subprocess.run(["sh", "-c", umask + script], capture_output=True)


def test_unpack_keeps_every_replaced_file_and_restores_owner_and_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(relay, "RELAY_DIR", str(tmp_path / "relay"))
    monkeypatch.setattr(relay, "REPLACED_DIR", str(tmp_path / "replaced"))
    target = tmp_path / "root"
    (target / "etc").mkdir(parents=True)
    (target / "etc/machine-id").write_text("fresh install\n")
    (target / "etc/same").write_text("same\n")
    stream = _tar({"etc/machine-id": (b"old identity\n", 0o444, 0), "etc/same": (b"same\n", 0o644, 0),
                   "srv/key": (b"secret\n", 0o600, 1234)})
    _, run = _unpack(stream, target, "h-s-state-2026-11-27T02:00:00", tmp_path / "marker")
    assert run.returncode == 0, run.stderr
    assert (target / "etc/machine-id").read_text() == "old identity\n"
    kept = tmp_path / "replaced/h-s-state-2026-11-27T02:00:00/etc/machine-id"
    assert kept.read_text() == "fresh install\n"
    assert not (tmp_path / "replaced/h-s-state-2026-11-27T02:00:00/etc/same").exists()  # identical: left alone
    key = (target / "srv/key").stat()
    assert (key.st_mode & 0o777, key.st_uid) == (0o600, 1234)
    assert (tmp_path / "marker").read_text() == "h-s-state-2026-11-27T02:00:00\n"
    assert list((tmp_path / "relay").iterdir()) == []  # the staging directory is gone


def test_a_broken_stream_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(relay, "RELAY_DIR", str(tmp_path / "relay"))
    monkeypatch.setattr(relay, "REPLACED_DIR", str(tmp_path / "replaced"))
    (tmp_path / "root").mkdir()
    staged, commit = _unpack(_tar({"f": (b"x" * 5000, 0o644, 0)})[:3000], tmp_path / "root", "a", tmp_path / "marker")
    assert staged.returncode != 0 and commit is None
    assert list((tmp_path / "root").iterdir()) == [] and not (tmp_path / "marker").exists()
    assert list((tmp_path / "relay").iterdir()) == []  # the stage is gone


def test_a_stream_cut_at_a_file_boundary_stages_but_another_digest_than_the_operators_commits_nothing(tmp_path, monkeypatch):
    """GNU tar exits 0 on a stream cut between two files: staging alone cannot tell. The commit is
    refused when the digest the operator computed is not the staged stream's; the target is untouched."""
    import tarfile as tarlib

    monkeypatch.setattr(relay, "RELAY_DIR", str(tmp_path / "relay"))
    monkeypatch.setattr(relay, "REPLACED_DIR", str(tmp_path / "replaced"))
    target = tmp_path / "root"
    target.mkdir()
    (target / "a").write_text("live a\n")
    whole = _tar({"a": (b"archived a\n", 0o644, 0), "b": (b"archived b\n", 0o644, 0)})
    with tarlib.open(fileobj=io.BytesIO(whole)) as archive:
        cut = whole[:archive.getmember("b").offset]  # everything before b's header: a whole file, then nothing
    staged, commit = _unpack(cut, target, "a1", tmp_path / "marker", sha256=hashlib.sha256(whole).hexdigest())
    assert staged.returncode == 0  # tar: "a" extracted, no complaint
    assert commit.returncode != 0 and b"is not the one the operator sent" in commit.stderr
    assert [p.name for p in target.iterdir()] == ["a"] and (target / "a").read_text() == "live a\n"
    assert not (tmp_path / "marker").exists() and not (tmp_path / "replaced").exists()
    assert list((tmp_path / "relay").iterdir()) == []  # the stage is removed by the refused commit


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_checkout_from_a_bundle_then_fetch_into_it_and_never_over_local_changes(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    _git(source, "init", "-q", "-b", "main")
    (source / "f").write_text("v1\n")
    _git(source, "add", "f")
    _git(source, "commit", "-qm", "v1")
    _git(source, "tag", "v1")
    v1 = subprocess.run(resolve_argv(str(source), "v1"), capture_output=True, text=True, check=True).stdout.strip()

    def checkout(commit):
        bundle = subprocess.run(bundle_argv(str(source)), capture_output=True, check=True).stdout
        script = checkout_script(str(tmp_path / "host"), commit, {"origin": "git@example.org:fleet.git"})
        return subprocess.run(["sh", "-c", script], input=bundle, capture_output=True)

    assert checkout(v1).returncode == 0
    assert _git(tmp_path / "host", "rev-parse", "HEAD") == v1
    assert _git(tmp_path / "host", "remote", "get-url", "origin") == "git@example.org:fleet.git"
    (source / "f").write_text("v2\n")
    _git(source, "commit", "-qam", "v2")
    v2 = _git(source, "rev-parse", "HEAD")
    assert checkout(v2).returncode == 0 and _git(tmp_path / "host", "rev-parse", "HEAD") == v2
    (tmp_path / "host/f").write_text("local edit\n")
    refused = checkout(v1)
    assert refused.returncode != 0 and (tmp_path / "host/f").read_text() == "local edit\n"


def test_summary_adds_up_the_steps_and_says_when_one_failed():
    summary = Summary("h", [Step("identity", "system: state", 3.0), Step("data system", "system: latest", None)])
    lines = summary.lines()
    assert lines[0].split() == ["identity", "3.0s", "restored", "system:", "state"]
    assert "FAILED" in lines[1] and lines[-1].split()[:2] == ["RTO", "3.0s"] and "a step failed" in lines[-1]


def test_unpack_into_a_root_leaves_the_directories_it_does_not_hold_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(relay, "RELAY_DIR", str(tmp_path / "relay"))
    monkeypatch.setattr(relay, "REPLACED_DIR", str(tmp_path / "replaced"))
    target = tmp_path / "root"
    (target / "srv").mkdir(parents=True)
    target.chmod(0o755)
    (target / "srv").chmod(0o751)
    _, run = _unpack(_tar({"srv/www/index.html": (b"hi\n", 0o644, 0)}), target, "a", tmp_path / "marker", umask="umask 077\n")
    assert run.returncode == 0, run.stderr
    assert (target.stat().st_mode & 0o777, (target / "srv").stat().st_mode & 0o777) == (0o755, 0o751)
    assert (target / "srv/www/index.html").read_text() == "hi\n"
