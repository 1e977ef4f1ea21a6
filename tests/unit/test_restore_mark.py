"""The restore's mark: the stamp of restored files, run with the real find/sort/sha256sum of this machine."""

from __future__ import annotations

import doctest
import subprocess

from pyinfra_backup import restore_mark
from pyinfra_backup.restore_mark import files_stamp, parse_mark, restored_roots, write_mark


def stamp(*roots) -> str:
    out = subprocess.run(["bash", "-c", files_stamp(tuple(str(r) for r in roots))], capture_output=True, text=True)
    assert out.returncode == 0 and len(out.stdout.strip()) == 64, out
    return out.stdout.strip()


def test_doctests():
    assert doctest.testmod(restore_mark).failed == 0


def test_the_stamp_changes_with_any_change_under_a_root_and_only_then(tmp_path):
    (tmp_path / "etc").mkdir()
    motd = tmp_path / "etc" / "motd"
    motd.write_text("welcome\n")
    first = stamp(motd, tmp_path / "etc")
    assert stamp(motd, tmp_path / "etc") == first  # nothing changed
    motd.write_text("welcome\n")  # the same bytes written again: a change all the same (mtime, ctime)
    rewritten = stamp(motd, tmp_path / "etc")
    assert rewritten != first
    motd.chmod(0o600)
    assert stamp(motd, tmp_path / "etc") != rewritten  # ctime
    before = stamp(motd)
    motd.unlink()
    assert stamp(motd) != before  # gone
    assert stamp(tmp_path / "missing") == stamp(tmp_path / "also-missing")  # no root: nothing listed, no error


def test_the_mark_is_written_atomically_and_read_back(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "file").write_text("x\n")
    mark = tmp_path / "restores" / "abc"
    roots = (str(tmp_path / "data"),)
    subprocess.run(["bash", "-c", write_mark(str(mark), "host01-system-2026-12-08T01:25:11", roots)], check=True)
    archive, recorded = parse_mark(mark.read_text())
    assert archive == "host01-system-2026-12-08T01:25:11" and recorded == stamp(*roots)
    assert [p.name for p in mark.parent.iterdir()] == ["abc"]  # no temp file left
    assert parse_mark("old-style-archive-name\n") == ("old-style-archive-name", None)


def test_roots_are_the_restored_paths_under_the_target():
    assert restored_roots("/", ("etc/motd", "etc/hosts"), ("/etc",)) == ("/etc/motd", "/etc/hosts")
    assert restored_roots("/srv/r", (), ("/srv/data",)) == ("/srv/r/srv/data",)
    assert restored_roots("/srv/r", (), ()) == ("/srv/r",)
