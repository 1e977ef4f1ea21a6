"""The scheduled run's units (pyinfra_backup/scheduler.py), checked by systemd's own tools:
`systemd-analyze calendar` for the timer's events, `systemd-analyze verify` for the files (it resolves
ExecStart's executable, so a wrongly quoted path fails it)."""

from __future__ import annotations

import os
import re
import subprocess
from datetime import datetime, timedelta

import pytest

from pyinfra_backup.scheduler import (
    InstalledScheduler, SchedulerError, SchedulerSettings, install_commands, on_calendar, parse_exec_start,
    parse_unit, remove_commands, service_unit, systemd_word, timer_unit,
)

ALLOWED = [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60, 120, 180, 240, 360, 480, 720, 1440]


def elapses(spec: str, base: str, count: int) -> list[datetime]:
    run = subprocess.run(["systemd-analyze", "calendar", f"--iterations={count}", f"--base-time={base}", spec],
                         capture_output=True, text=True, env={**os.environ, "TZ": "UTC"}, timeout=30)
    assert run.returncode == 0, run.stderr
    found = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", run.stdout)
    return [datetime.fromisoformat(stamp) for stamp in found]


@pytest.mark.parametrize("interval", ALLOWED)
def test_the_timer_fires_every_interval_as_systemd_computes_it(interval):
    times = elapses(on_calendar(interval), "2026-03-01 00:07:00 UTC", 4)
    assert len(times) == 4
    assert {b - a for a, b in zip(times, times[1:])} == {timedelta(minutes=interval)}
    assert times[0] - datetime(2026, 3, 1, 0, 7) <= timedelta(minutes=interval)


@pytest.mark.parametrize("interval", [0, -5, 7, 45, 90, 100, 2880, "15", 15.0, True])
def test_an_interval_a_calendar_cannot_keep_is_refused(interval):
    with pytest.raises(SchedulerError, match=r"^schedule_interval: expected"):
        on_calendar(interval)


def verify(tmp_path, settings: SchedulerSettings) -> subprocess.CompletedProcess:
    units = tmp_path / "units"
    units.mkdir(exist_ok=True)
    (units / settings.service_name).write_text(service_unit(settings))
    (units / settings.timer_name).write_text(timer_unit(settings))
    return subprocess.run(["systemd-analyze", "verify", str(units / settings.service_name),
                           str(units / settings.timer_name)], capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verifies_the_units_and_resolves_a_quoted_exec_start(tmp_path):
    project = tmp_path / "my project 100% $HOME"  # a space, a specifier and a variable: all must be escaped
    pyinfra = project / ".venv/bin/pyinfra"
    pyinfra.parent.mkdir(parents=True)
    pyinfra.write_text("#!/bin/sh\n")
    pyinfra.chmod(0o755)
    settings = SchedulerSettings.build(inventory="/etc/pyinfra-backup/fleet 1.py", project=str(project),
                                       args="--limit clients")
    run = verify(tmp_path, settings)
    assert run.returncode == 0 and run.stdout == run.stderr == "", run
    service = parse_unit(service_unit(settings))["Service"]
    assert parse_exec_start(service["ExecStart"]) == settings.exec_start() == [
        str(pyinfra), "-y", "--limit", "clients", "/etc/pyinfra-backup/fleet 1.py", f"{project}/deploys/backup.py"]
    assert service["User"] == "pyinfra-backup" and service["Type"] == "oneshot"

    pyinfra.unlink()  # the same units, the executable gone: verify says so (the check above can fail)
    missing = verify(tmp_path, settings)
    assert missing.returncode != 0 and "is not executable" in missing.stderr, missing


def test_a_misspelt_key_is_what_verify_would_report(tmp_path):
    settings = SchedulerSettings.build(inventory="/etc/fleet.py")
    units = tmp_path / "units"
    units.mkdir()
    (units / settings.timer_name).write_text(timer_unit(settings).replace("Persistent=", "Persistant="))
    (units / settings.service_name).write_text(service_unit(settings))
    run = subprocess.run(["systemd-analyze", "verify", *map(str, units.iterdir())], capture_output=True, text=True)
    assert "Unknown key 'Persistant' in section [Timer]" in run.stderr


def test_defaults_and_the_timer_file():
    settings = SchedulerSettings.build(inventory="/etc/fleet.py")
    assert (settings.interval, settings.randomized_delay, settings.user) == (15, 300, "pyinfra-backup")
    assert settings.venv == f"{settings.project}/.venv" and settings.home == "/var/lib/pyinfra-backup-operator"
    timer = parse_unit(timer_unit(settings))
    assert timer["Timer"] == {"OnCalendar": "*-*-* *:00/15:00", "RandomizedDelaySec": "300",
                              "FixedRandomDelay": "true", "Persistent": "true", "Unit": "pyinfra-backup.service"}
    assert timer["Install"] == {"WantedBy": "timers.target"}
    custom = SchedulerSettings.build(inventory="/etc/fleet.py", interval=60, randomized_delay=0, user="ops",
                                     project="/opt/pbk/", name="pbk-hourly")
    assert custom.exec_start() == ["/opt/pbk/.venv/bin/pyinfra", "-y", "/etc/fleet.py", "/opt/pbk/deploys/backup.py"]
    assert custom.timer_name == "pbk-hourly.timer"
    assert "RandomizedDelaySec=0" in timer_unit(custom) and "User=ops" in service_unit(custom)


@pytest.mark.parametrize(("given", "message"), [
    ({}, "schedule_inventory: required"),
    ({"schedule_inventory": "fleet.py"}, "schedule_inventory: expected an absolute path"),
    ({"schedule_inventory": "/f.py", "schedule_interval": 7}, "schedule_interval: expected minutes that divide"),
    ({"schedule_inventory": "/f.py", "schedule_randomized_delay": 900}, "schedule_randomized_delay: expected"),
    ({"schedule_inventory": "/f.py", "schedule_user": "Root; rm"}, "schedule_user: expected a user name"),
    ({"schedule_inventory": "/f.py", "schedule_name": "../x"}, "schedule_name: expected a unit name"),
    ({"schedule_inventory": "/f.py", "schedule_present": "maybe"}, "schedule_present: expected true or false"),
    ({"schedule_inventory": "/f.py", "schedule_project": "opt/pbk"}, "schedule_project: expected an absolute path"),
])
def test_bad_settings_name_the_key(given, message):
    with pytest.raises(SchedulerError) as error:
        SchedulerSettings.from_data(given)
    assert str(error.value).startswith(message), error.value


def test_removal_needs_no_inventory_and_installed_units_need_no_command():
    assert not SchedulerSettings.from_data({"schedule_present": False}).present
    settings = SchedulerSettings.build(inventory="/etc/fleet.py")
    done = InstalledScheduler(service=service_unit(settings), timer=timer_unit(settings), enabled=True,
                              user_exists=True, pyinfra_ok=True, inventory_ok=True, user_reads=True)
    assert install_commands(settings, done) == []
    assert remove_commands(settings, InstalledScheduler(user_exists=True)) == []
    fresh = install_commands(settings, InstalledScheduler(pyinfra_ok=True, inventory_ok=True))
    assert fresh[0].startswith("useradd --system") and "runuser -u pyinfra-backup" in fresh[1]
    assert not any("systemctl" in command for command in fresh)  # systemd not running: files and link only
    running = install_commands(settings, InstalledScheduler(service="old", timer=timer_unit(settings), enabled=True,
                                                            user_exists=True, systemd_running=True))
    assert len(running) == 2 and "mktemp /etc/systemd/system/pyinfra-backup.service.XXXXXX" in running[0]
    assert running[1] == "systemctl daemon-reload && systemctl restart pyinfra-backup.timer"


@pytest.mark.parametrize("word", ["/plain/path", "a b", "100%", "$HOME", 'say "hi"', "back\\slash", "'single'"])
def test_exec_start_words_round_trip(word):
    assert parse_exec_start(systemd_word(word, executable=True) + " " + systemd_word(word)) == [word, word]
