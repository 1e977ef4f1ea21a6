"""The restore drill script (pyinfra_backup/drill.py), run on this machine with the real borg on a local
repo: sampling, comparison, skips, errors and clean-up, without a fleet (test_verify_fleet.py runs it on one)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from pyinfra_backup.borg import Job, Location
from pyinfra_backup.drill import drill_script, parse_drill

ARCHIVE = "h-system-2026-11-27T12:00:00"
ENV = {**os.environ, "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_PASSPHRASE": "", "TZ": "UTC"}


def make_repo(tmp_path: Path) -> Path:
    """A local repo with one archive of `data/`: 40 files of 1..40 KB, a hard link, a symlink, odd names."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for i in range(1, 41):
        (data / "sub" / f"f{i:02d}").write_bytes(os.urandom(i * 1000))
    os.link(data / "sub" / "f01", data / "hardlink")
    os.symlink("sub/f02", data / "symlink")
    (data / "new\nline").write_text("x")
    (data / " lead\tand tab").write_text("y")
    (data / "back\\slash").write_text("z")
    url = str(tmp_path / "repo")
    subprocess.run(["borg", "init", "-e", "none", url], env=ENV, check=True, capture_output=True)
    subprocess.run(["borg", "create", f"{url}::{ARCHIVE}", str(data)], env=ENV, check=True, capture_output=True, cwd="/")
    return tmp_path


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """One repo shared by the tests that change nothing."""
    return make_repo(tmp_path_factory.mktemp("drill"))


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path)


def drill(tmp: Path, files=100, max_bytes=10**9, archive=ARCHIVE, shell="sh"):
    job = Job.from_data("system", {"repo": str(tmp / "repo"), "paths": [str(tmp / "data")], "encryption": {"mode": "none"}})
    record, scratch = str(tmp / "records" / "last-drill"), str(tmp / "scratch")
    script = drill_script(job, Location(job.repo), archive, files, max_bytes, record, 5, scratch)
    run = subprocess.run([shell, "-c", script], capture_output=True, text=True)
    return parse_drill(run.stdout.splitlines()), run


def tree_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for item in sorted(path.rglob("*")):
        stat = item.lstat()
        digest.update(f"{item}:{stat.st_mtime_ns}:{stat.st_mode}".encode())
        if item.is_file() and not item.is_symlink():
            digest.update(item.read_bytes())
    return digest.hexdigest()


def test_a_healthy_archive_compares_every_sampled_file_and_leaves_nothing_behind(healthy):
    repo = healthy
    before = tree_hash(repo / "data")
    report, run = drill(repo)
    assert run.returncode == 0 and not report.failed, run.stdout + run.stderr
    assert report.archive == ARCHIVE
    assert (report.files, report.odd_names) == (43, 1)  # 40 + the hard link + the odd names but the newline
    assert report.selected == report.compared == 43 and report.found == {}
    assert tree_hash(repo / "data") == before  # live files only read
    assert os.listdir(repo / "scratch") == []  # the scratch directory is gone
    assert (repo / "records" / "last-drill").read_text().split("\n")[0].endswith(" 0")
    assert "43 of 43 sampled files compared" in report.summary()


def test_the_sample_is_bounded_by_count_and_bytes_and_the_same_for_the_same_archive(healthy):
    first, _ = drill(healthy, files=5)
    again, _ = drill(healthy, files=5)
    assert first.selected == first.compared == 5 and not first.failed
    assert first.selected_bytes == again.selected_bytes  # same archive, same sample
    small, _ = drill(healthy, max_bytes=50_000)
    assert 0 < small.selected_bytes <= 50_000 and 0 < small.selected < 43 and not small.failed


def test_an_archive_that_is_not_there_is_an_error(healthy):
    report, _ = drill(healthy, archive="h-system-2026-11-28T00:00:00")
    assert report.failed and report.error.startswith("cannot list the archive: Archive h-system-2026-11-28T00:00:00 "
                                                     "does not exist"), report.error


@pytest.mark.parametrize("shell", ["dash", "bash"])  # Debian's sh, NixOS' sh
def test_a_silently_changed_file_fails_a_changed_or_removed_one_is_skipped(repo, shell):
    data = repo / "data" / "sub"
    corrupt, edited, removed = data / "f10", data / "f11", data / "f12"
    stat = corrupt.stat()
    with open(corrupt, "r+b") as handle:  # same size, same mtime, other content: bit rot
        handle.seek(100)
        flipped = bytes(b ^ 0xFF for b in handle.read(4))
        handle.seek(100)
        handle.write(flipped)
    os.utime(corrupt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    edited.write_bytes(edited.read_bytes() + b"more")
    removed.unlink()
    report, run = drill(repo, shell=shell)
    assert report.failed and report.mismatched == [str(corrupt).lstrip("/")], run.stdout
    assert report.found["changed"] == [str(edited).lstrip("/")] and report.found["gone"] == [str(removed).lstrip("/")]
    assert report.compared == 41  # 43 - changed - gone, the mismatch included
    summary = report.summary()
    assert f"1 differ from the archive although size and mtime match: {corrupt}" in summary
    assert f"1 skipped, changed since the archive: {edited}" in summary
    assert (repo / "records" / "last-drill").read_text().split("\n")[0].endswith(" 1")


def test_a_corrupt_repo_is_an_error_naming_borgs_reason(repo):
    segment = max((repo / "repo" / "data" / "0").iterdir(), key=lambda p: p.stat().st_size)
    with open(segment, "r+b") as handle:
        handle.seek(segment.stat().st_size // 2)
        handle.write(b"\xff" * 64)
    report, _ = drill(repo)
    assert report.failed and report.error.startswith("cannot extract the sample: Data integrity error"), report.error
    assert os.listdir(repo / "scratch") == []


def test_a_drill_that_compares_no_file_fails_saying_nothing_was_verified(repo):
    for path in (repo / "data").rglob("*"):  # every file changed since the archive: each one skipped
        if path.is_file() and not path.is_symlink():
            os.utime(path, (1, 1))
    report, run = drill(repo)
    assert report.complete and report.compared == 0 and report.found["changed"], run.stdout
    assert report.failed
    assert report.summary().startswith("drill failed: no file compared, nothing verified (drill of "), report.summary()
    assert (repo / "records" / "last-drill").read_text().split("\n")[0].endswith(" 2")
    nothing_fits, _ = drill(repo, max_bytes=0)  # an empty sample verifies nothing either
    assert nothing_fits.compared == 0 and nothing_fits.failed
