"""The run lock's script (pyinfra_backup/run_lock.py) run by a real sh with a real flock: taken, re-entered
by its own run, waited for and reported when held, and gone as soon as the process it follows is."""

from __future__ import annotations

import shutil
import subprocess
import time

from pyinfra_backup.run_lock import RunId, lock_script, parse_lock

ONE, TWO = RunId("ops-a", 101, "ops-a:101:aa"), RunId("ops-b", 202, "ops-b:202:bb")


def session(script: str, sshd: str) -> subprocess.Popen:
    """A stand-in for an sshd session process (a shell named `sshd`) whose child shell runs the script."""
    return subprocess.Popen([sshd, "-c", 'sh -c "$1"; exec sleep 60', "sshd", script], stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen):
    return parse_lock([proc.stdout.readline()])


def test_taken_reentered_waited_for_and_released_with_its_session(tmp_path):
    lock, sshd = str(tmp_path / "state" / "run.lock"), str(tmp_path / "sshd")
    shutil.copy("/bin/sh", sshd)
    first = session(lock_script(ONE, 5, 1796692800, lock), sshd)
    taken = result(first)
    assert taken.ours and taken.waited == 0
    assert (tmp_path / "state" / "run.lock").read_text().split() == ["1796692800", "ops-a", "101", "ops-a:101:aa"]
    again = session(lock_script(ONE, 5, 1796692900, lock), sshd)  # the same run reads the host again
    assert result(again).ours
    began = time.monotonic()
    other = session(lock_script(TWO, 1, 1796692900, lock), sshd)
    held = result(other)
    assert held.held_by is not None and time.monotonic() - began >= 1
    assert held.describe() == "another run holds this host since 2026-12-08 01:20:00 UTC (ops-a, pid 101)"
    waiting = session(lock_script(TWO, 30, 1796693000, lock), sshd)
    time.sleep(0.5)
    first.kill()  # the run's connection ends (and its parent reaps it): the holder follows within a second
    first.wait()
    began = time.monotonic()
    taken = result(waiting)
    assert taken.ours and taken.waited <= 3 and time.monotonic() - began < 3
    assert (tmp_path / "state" / "run.lock").read_text().split()[:3] == ["1796693000", "ops-b", "202"]
    for proc in (again, other, waiting):
        proc.kill()
        proc.wait()
