"""Records that cannot be torn (issue 17): writers racing, a writer killed between write and rename,
and reads that name what they cannot parse instead of raising."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time

from pyinfra_backup import records
from pyinfra_backup.shell import atomic_record

def slow_borg(name: str) -> str:
    """borg create --json, slowly: the document's first part, a pause, its end (`name` sets the length)."""
    head = json.dumps({"archive": {"name": name, "start": "2026-12-08T01:00:00"}})[:-1]
    script = f"printf %s {shlex.quote(head)}; sleep 0.6; echo " + shlex.quote(', "x": 1}')
    return "sh -c " + shlex.quote(script)


def texts(directory) -> dict[str, str]:
    return {key: (directory / name).read_text() for key, name in records.FILES.items() if (directory / name).exists()}


def test_two_creates_at_once_leave_one_whole_record(tmp_path, monkeypatch):
    """At 7a4cf8a both wrote borg's JSON into one fixed temp name: `JSONDecodeError: Extra data` ever after."""
    monkeypatch.setattr(records, "JOBS_DIR", str(tmp_path))
    first = subprocess.Popen(["sh", "-c", records.create_command("sys", slow_borg("a" * 40), False)])
    time.sleep(0.2)
    second = subprocess.Popen(["sh", "-c", records.create_command("sys", slow_borg("b"), False)])
    assert first.wait() == 0 and second.wait() == 0
    parsed = records.parse_records(texts(tmp_path / "sys"))
    assert parsed.unreadable == () and parsed.create["archive"]["name"] in ("a" * 40, "b") and parsed.attempt.ok


def test_a_writer_killed_between_write_and_rename_leaves_the_old_record(tmp_path):
    path = tmp_path / "last-check"
    path.write_text("1764244800 0\n")
    writer = subprocess.Popen(["sh", "-c", atomic_record(str(path), "echo 1764244999; sleep 30")], start_new_session=True)
    time.sleep(0.3)
    os.killpg(writer.pid, signal.SIGKILL)
    writer.wait()
    assert path.read_text() == "1764244800 0\n"
    assert records.parse_attempt(path.read_text()).ok


def test_a_failed_producer_changes_nothing_and_fails(tmp_path):
    path = tmp_path / "last-attempt"
    path.write_text("1764244800 0\n")
    assert subprocess.run(["sh", "-c", atomic_record(str(path), "echo 1; false")]).returncode != 0
    assert path.read_text() == "1764244800 0\n" and os.listdir(tmp_path) == ["last-attempt"]


def test_unreadable_records_are_named_never_raised():
    torn = records.parse_records({"create": '{"archive": {"name": "a"}}{"archive"', "attempt": "garbage",
                                  "check": "1764244800 0", "checkok": "12x"})
    assert torn.create is None and torn.last_archive is None and torn.attempt is None and torn.check.ok
    assert torn.unreadable == ("last-create.json", "last-attempt", "last-check-ok")
    odd = records.parse_records({"create": json.dumps({"archive": {"name": "a", "start": "not a time"}})})
    assert odd.unreadable == ("last-create.json",)
    assert records.parse_records({"create": json.dumps([1, 2])}).unreadable == ("last-create.json",)
    fine = records.parse_records({"create": json.dumps({"archive": {"name": "a", "start": "2026-12-08T01:00:00"}})})
    assert fine.unreadable == () and fine.last_archive[0] == "a"
