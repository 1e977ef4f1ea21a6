"""Calendar specs (NixOS startAt) must mean what systemd makes of them: hand-written cases, and
next/previous/normalized form compared with the real `systemd-analyze calendar`."""

import doctest
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyinfra_backup import schedule
from pyinfra_backup.schedule import Schedule, parse_calendar


def utc(*fields):
    return datetime(*fields, tzinfo=UTC)


BASE = utc(2024, 3, 10, 12, 34, 56)  # a Sunday


def test_docstring_examples():
    assert doctest.testmod(schedule).failed == 0


@pytest.mark.parametrize(
    ("shorthand", "normalized", "previous", "next"),
    [
        ("minutely", "*-*-* *:*:00", utc(2024, 3, 10, 12, 34), utc(2024, 3, 10, 12, 35)),
        ("hourly", "*-*-* *:00:00", utc(2024, 3, 10, 12), utc(2024, 3, 10, 13)),
        ("daily", "*-*-* 00:00:00", utc(2024, 3, 10), utc(2024, 3, 11)),
        ("weekly", "Mon *-*-* 00:00:00", utc(2024, 3, 4), utc(2024, 3, 11)),
        ("monthly", "*-*-01 00:00:00", utc(2024, 3, 1), utc(2024, 4, 1)),
        ("quarterly", "*-01,04,07,10-01 00:00:00", utc(2024, 1, 1), utc(2024, 4, 1)),
        ("semiannually", "*-01,07-01 00:00:00", utc(2024, 1, 1), utc(2024, 7, 1)),
        ("yearly", "*-01-01 00:00:00", utc(2024, 1, 1), utc(2025, 1, 1)),
        ("annually", "*-01-01 00:00:00", utc(2024, 1, 1), utc(2025, 1, 1)),
        ("DAILY", "*-*-* 00:00:00", utc(2024, 3, 10), utc(2024, 3, 11)),
    ],
)
def test_shorthands(shorthand, normalized, previous, next):
    spec = parse_calendar(shorthand)
    assert spec.normalized == normalized
    assert (spec.previous(BASE), spec.next(BASE)) == (previous, next)


# The examples of systemd.time(7), but for fractional seconds (rejected here).
@pytest.mark.parametrize(
    ("spec", "normalized"),
    [
        ("Sat,Thu,Mon..Wed,Sat..Sun", "Mon..Thu,Sat,Sun *-*-* 00:00:00"),
        ("Mon,Sun 12-*-* 2,1:23", "Mon,Sun 2012-*-* 01,02:23:00"),
        ("Wed *-1", "Wed *-*-01 00:00:00"),
        ("Wed..Wed,Wed *-1", "Wed *-*-01 00:00:00"),
        ("Wed, 17:48", "Wed *-*-* 17:48:00"),
        ("Wed..Sat,Tue 12-10-15 1:2:3", "Tue..Sat 2012-10-15 01:02:03"),
        ("*-*-7 0:0:0", "*-*-07 00:00:00"),
        ("10-15", "*-10-15 00:00:00"),
        ("monday *-12-* 17:00", "Mon *-12-* 17:00:00"),
        ("Mon,Fri *-*-3,1,2 *:30:45", "Mon,Fri *-*-01,02,03 *:30:45"),
        ("12,14,13,12:20,10,30", "*-*-* 12,13,14:10,20,30:00"),
        ("12..14:10,20,30", "*-*-* 12..14:10,20,30:00"),
        ("mon,fri *-1/2-1,3 *:30:45", "Mon,Fri *-01/2-01,03 *:30:45"),
        ("03-05 08:05:40", "*-03-05 08:05:40"),
        ("08:05:40", "*-*-* 08:05:40"),
        ("05:40", "*-*-* 05:40:00"),
        ("Sat,Sun 12-05 08:05:40", "Sat,Sun *-12-05 08:05:40"),
        ("Sat,Sun 08:05:40", "Sat,Sun *-*-* 08:05:40"),
        ("2003-03-05 05:40", "2003-03-05 05:40:00"),
        ("2003-02..04-05", "2003-02..04-05 00:00:00"),
        ("2003-03-05 05:40 UTC", "2003-03-05 05:40:00 UTC"),
        ("2003-03-05", "2003-03-05 00:00:00"),
        ("daily UTC", "*-*-* 00:00:00 UTC"),
        ("weekly Pacific/Auckland", "Mon *-*-* 00:00:00 Pacific/Auckland"),
        ("*:2/3", "*-*-* *:02/3:00"),
        # and more forms
        ("Mon-Wed,Fri", "Mon..Wed,Fri *-*-* 00:00:00"),
        ("Mon,Tue,Sat,Sun", "Mon,Tue,Sat,Sun *-*-* 00:00:00"),
        ("Mon..Sun", "*-*-* 00:00:00"),
        ("*-*~1", "*-*~01 00:00:00"),
        ("Mon *-05~07/1", "Mon *-05~07/1 00:00:00"),
        ("*-*~2..7/2", "*-*~02..06/2 00:00:00"),
        ("*-*-1..10/2", "*-*-01..09/2 00:00:00"),
        ("*-*-* 0..23/1:00", "*-*-* 00..23:00:00"),
        ("*-*-* 5..5:00", "*-*-* 05:00:00"),
        ("*-*-* *:*:0/1", "*-*-* *:*:*"),
        ("70..5-01-01", "1970..2005-01-01 00:00:00"),
        ("@86400", "1970-01-02 00:00:00 UTC"),
        ("12:00 utc", "*-*-* 12:00:00 UTC"),
    ],
)
def test_normalized_form(spec, normalized):
    assert parse_calendar(spec).normalized == normalized


@pytest.mark.parametrize(
    ("spec", "base", "previous", "next"),
    [
        ("Mon..Fri 02:00", BASE, utc(2024, 3, 8, 2), utc(2024, 3, 11, 2)),
        ("Sat,Sun 12:30:15", BASE, utc(2024, 3, 10, 12, 30, 15), utc(2024, 3, 16, 12, 30, 15)),
        ("*-*-* 0/6:00", BASE, utc(2024, 3, 10, 12), utc(2024, 3, 10, 18)),
        ("*-*-* *:0/15:30", BASE, utc(2024, 3, 10, 12, 30, 30), utc(2024, 3, 10, 12, 45, 30)),
        ("*-*-* 20/3:00", BASE, utc(2024, 3, 9, 23), utc(2024, 3, 10, 20)),
        ("*-*~01 23:00", BASE, utc(2024, 2, 29, 23), utc(2024, 3, 31, 23)),  # last day of the month
        ("Mon *-05~07/1", BASE, utc(2023, 5, 29), utc(2024, 5, 27)),  # last Monday in May
        ("*-02~03", BASE, utc(2024, 2, 27), utc(2025, 2, 26)),  # third last day in February
        ("*-*-31", BASE, utc(2024, 1, 31), utc(2024, 3, 31)),
        ("Fri *-*-13", BASE, utc(2023, 10, 13), utc(2024, 9, 13)),
        ("2024..2026-01,07-01", BASE, utc(2024, 1, 1), utc(2024, 7, 1)),
        ("2020/3-06-15 06:00", BASE, utc(2023, 6, 15, 6), utc(2026, 6, 15, 6)),
        ("*-02-29 06:00", BASE, utc(2024, 2, 29, 6), utc(2028, 2, 29, 6)),
        ("Mon *-02-29", BASE, utc(2016, 2, 29), utc(2044, 2, 29)),
        ("2012-*-* 11:12:13", BASE, utc(2012, 12, 31, 11, 12, 13), None),
        ("2199-12-31 23:59:59", BASE, None, utc(2199, 12, 31, 23, 59, 59)),
        ("*-02-30", BASE, None, None),
        ("@1710074096", BASE, BASE, None),
        ("@1710074096", BASE - timedelta(microseconds=1), None, BASE),
        ("hourly", utc(2024, 3, 10, 12, 0, 0, 500), utc(2024, 3, 10, 12), utc(2024, 3, 10, 13)),
        ("hourly", utc(1969, 12, 31, 23, 59, 59), None, utc(1970, 1, 1)),
        ("hourly", utc(2300, 1, 1), utc(2199, 12, 31, 23), None),
    ],
)
def test_previous_and_next(spec, base, previous, next):
    calendar_spec = parse_calendar(spec)
    assert (calendar_spec.previous(base), calendar_spec.next(base)) == (previous, next)


def test_events_are_in_the_specs_time_zone():
    noon_berlin = parse_calendar("12:00 Europe/Berlin")
    assert noon_berlin.next(utc(2024, 1, 15)) == utc(2024, 1, 15, 11)  # CET, UTC+1
    assert noon_berlin.next(utc(2024, 7, 15)) == utc(2024, 7, 15, 10)  # CEST, UTC+2
    assert noon_berlin.previous(utc(2024, 7, 15, 9)) == utc(2024, 7, 14, 10)
    # Other zones and offsets given in: the same instant
    berlin = ZoneInfo("Europe/Berlin")
    assert noon_berlin.next(datetime(2024, 1, 15, 11, 59, tzinfo=berlin)) == utc(2024, 1, 15, 11)
    assert parse_calendar("Mon 09:00 Asia/Kolkata").next(BASE) == utc(2024, 3, 11, 3, 30)


def test_dst_skips_missing_times_and_fires_repeated_times_once():
    at_half_past_two = parse_calendar("*-*-* 02:30 Europe/Berlin")
    # 2024-03-31 02:00 CET jumps to 03:00 CEST: no 02:30 that day.
    assert at_half_past_two.next(utc(2024, 3, 30, 12)) == utc(2024, 4, 1, 0, 30)
    assert at_half_past_two.previous(utc(2024, 4, 1)) == utc(2024, 3, 30, 1, 30)
    # 2024-10-27 03:00 CEST falls back to 02:00 CET: 02:30 happens twice, fires the first time.
    assert at_half_past_two.next(utc(2024, 10, 26, 12)) == utc(2024, 10, 27, 0, 30)
    assert at_half_past_two.next(utc(2024, 10, 27, 0, 30)) == utc(2024, 10, 28, 1, 30)
    assert at_half_past_two.previous(utc(2024, 10, 27, 1, 45)) == utc(2024, 10, 27, 0, 30)  # 02:45, second time
    half_hourly = parse_calendar("*:0/30 Europe/Berlin")
    assert half_hourly.previous(utc(2024, 10, 27, 1, 45)) == utc(2024, 10, 27, 0, 30)
    assert half_hourly.next(utc(2024, 10, 27, 1, 10)) == utc(2024, 10, 27, 2)  # 03:00 CET


INVALID = [
    ("Mon *-*-* 25:00", "hour 25 out of range 0..23"),
    ("*-*-* 12:60", "minute 60 out of range 0..59"),
    ("*-*-* 12:00:60", "second 60 out of range 0..59"),
    ("*-13-01", "month 13 out of range 1..12"),
    ("*-02-00", "day 0 out of range 1..31"),
    ("2200-01-01", "year 2200 out of range 1970..2199"),
    ("1969-01-01", "year 1969 out of range 1970..2199"),
    ("*-*~29", "day ~29 out of range ~1..~28"),
    ("*-*~1/1", "day ~1/1 never repeats within ~1..~28"),
    ("*-*-* 20/5:00", "hour 20/5 never repeats within 0..23"),
    ("*-*-* 0/25:00", "hour '0/25': step 25 is longer than 0..23"),
    ("*-*-* 5/0:00", "hour '5/0': the step must be at least 1"),
    ("*-*-10..1", "day range '10..1' runs backwards"),
    ("*-*-* 00:00:05..05", "second range '05..05' must rise"),
    ("*-*-* *:*/15", "bad minute '*/15': expected *, N, N/STEP, N..M or N..M/STEP ('*' stands alone"),
    ("Fri..Mon", "weekday range 'Fri..Mon' runs backwards"),
    ("Mond 12:00", "bad weekday 'Mond' in 'Mond'"),
    ("Mon..", "bad weekday '' in 'Mon..'"),
    ("Mon,,Tue", "bad weekday '' in 'Mon,,Tue'"),
    ("12", "bad date '12'"),
    ("*~02-01", "bad date '*~02-01'"),
    ("*-*-* 1:2:3:4", "bad time '1:2:3:4'"),
    ("Mon *-*-* 12:00 *-*-*", "unexpected '*-*-*' after the time"),
    ("daily 12:00", "'daily' is a shorthand and cannot be combined with other fields"),
    ("12:00 Foo/Bar", "unknown time zone 'Foo/Bar'"),
    ("12:00 europe/berlin", "unknown time zone 'europe/berlin'"),
    ("@12x", "bad timestamp '@12x'"),
    ("@7258118400", "year 2200 out of range 1970..2199"),
    ("", "empty"),
    (" daily", "leading or trailing whitespace"),
]
SYSTEMD_ACCEPTS = {"*-*-* 12:00:00.5": "fractional seconds are not supported: '00.5'"}


@pytest.mark.parametrize(("spec", "message"), INVALID + list(SYSTEMD_ACCEPTS.items()))
def test_invalid_specs(spec, message):
    with pytest.raises(ValueError) as error:
        parse_calendar(spec)
    assert str(error.value).startswith(f'invalid calendar spec "{spec}": {message}')


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="naive datetime"):
        parse_calendar("daily").next(datetime(2024, 1, 1))


def test_schedule_of_several_specs():
    weekday_nights_and_saturday_noon = Schedule.parse(["Mon..Fri 02:00", "Sat 12:00"])
    assert weekday_nights_and_saturday_noon.normalized == "Mon..Fri *-*-* 02:00:00; Sat *-*-* 12:00:00"
    assert weekday_nights_and_saturday_noon.previous(BASE) == utc(2024, 3, 9, 12)
    assert weekday_nights_and_saturday_noon.next(BASE) == utc(2024, 3, 11, 2)
    assert Schedule.parse("daily") == Schedule.parse(["daily"])


def test_empty_schedule_never_fires():
    never = Schedule.parse([])  # NixOS: startAt = [ ] runs the job by hand only
    assert (never.normalized, never.previous(BASE), never.next(BASE)) == ("never", None, None)
    assert never.due_state(utc(2000, 1, 1), BASE) == "fresh"
    assert never.due_state(None, BASE) == "missing"


@pytest.mark.parametrize(
    ("last_archive", "state"),
    [
        (None, "missing"),
        (utc(2024, 3, 10, 0, 30), "fresh"),  # after today's 00:00 run
        (utc(2024, 3, 10), "fresh"),  # at it
        (utc(2024, 3, 10, 13), "fresh"),  # after now (clock skew): not our business
        (utc(2024, 3, 9, 23, 59, 59), "due"),  # today's run missing
        (utc(2024, 3, 9), "due"),  # made by yesterday's run
        (utc(2024, 3, 8, 23, 59, 59), "stale"),  # yesterday's run missing too
    ],
)
def test_due_state(last_archive, state):
    assert Schedule.parse("daily").due_state(last_archive, BASE) == state


def test_due_state_before_the_first_event():
    once = Schedule.parse("2024-06-01 12:00")
    assert once.due_state(utc(2020, 1, 1), BASE) == "fresh"  # nothing scheduled yet
    assert once.due_state(utc(2020, 1, 1), utc(2024, 7, 1)) == "due"  # no event before the only one


# Compared with systemd: specs of every form, base times around month, year and DST boundaries.
SPECS = [
    *("minutely", "hourly", "daily", "weekly", "monthly", "quarterly", "semiannually", "yearly", "annually"),
    "Mon *-*-* 02:00",
    "Mon..Fri 02:00",
    "Sat,Sun 12:30:15",
    "Mon,Wed,Fri..Sun 23:59:59",
    "Thu,Fri 2012-*-1,5 11:12:13",
    "*-*-* *:0/15",
    "*-*-* 0/6:00",
    "*-*-* 20/3:00",
    "*-*-* *:*:0/20",
    "*-*-1..10/2 04:00",
    "*-*-31",
    "*-02-29 06:00",
    "Mon *-02-29",
    "*-02-30",
    "*-*~01 23:00",
    "*-02~03",
    "Mon *-05~07/1",
    "*-*~1..7/2",
    "*-*~07/3 12:00",
    "Fri *-*-13",
    "2024..2026-01,07-01",
    "2025/2-06-15",
    "24-12-24 18:00",
    "mon,fri *-1/2-1,3 *:30:45",
    "12,14,13,12:20,10,30",
    "12..14:10,20,30",
    "@1735689600",
    "daily UTC",
    "12:00 Europe/Berlin",
    "*-*-* 02:30 Europe/Berlin",
    "*:0/30 Europe/Berlin",
    "hourly America/New_York",
    "Mon 09:00 Asia/Kolkata",
    "*:0/30 Australia/Lord_Howe",
]
BASES = [
    BASE,
    utc(2024, 2, 28, 23, 59, 59, 500000),
    utc(2023, 12, 31, 23, 59, 59),
    utc(2025, 1, 1),
    utc(2024, 3, 30, 23),  # before Berlin skips 02:00..03:00
    utc(2024, 10, 26, 22),  # before Berlin repeats 02:00..03:00
    utc(2024, 11, 3, 4),  # before New York repeats 01:00..02:00
    utc(2024, 4, 6, 14),  # before Lord Howe repeats 01:30..02:00
]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="no systemd-analyze (Debian package: systemd)")


def systemd_calendar(spec, base, iterations):
    """systemd's normalized form of `spec` and its next `iterations` elapses after `base` (None: never)."""
    options = [f"--base-time={base:%Y-%m-%d %H:%M:%S.%f} UTC", f"--iterations={iterations}"]
    run = subprocess.run(
        [SYSTEMD_ANALYZE, "calendar", *options, spec],
        env={**os.environ, "TZ": "UTC", "LC_ALL": "C"},
        capture_output=True,
        text=True,
        check=True,
    )
    elapses = re.findall(r"(?:Next elapse|Iter\. #\d+): (?:never|\w+ (.*) UTC)", run.stdout)
    normalized = re.search(r"Normalized form: (.*)", run.stdout).group(1)
    elapses = [datetime.fromisoformat(e).replace(tzinfo=UTC) if e else None for e in elapses]
    return normalized, elapses + [None] * (iterations - len(elapses))  # it stops at "never"


@needs_systemd
@pytest.mark.parametrize("spec", SPECS)
def test_next_and_normalized_form_match_systemd(spec):
    calendar_spec = parse_calendar(spec)
    for base in BASES:
        normalized, elapses = systemd_calendar(spec, base, iterations=8)
        ours, t = [], base
        for _ in elapses:
            t = t and calendar_spec.next(t)
            ours.append(t)
        assert (calendar_spec.normalized, ours) == (normalized, elapses), f"base {base}"


@needs_systemd
@pytest.mark.parametrize("spec", SPECS)
def test_previous_is_the_last_systemd_event(spec):
    """previous(t) is an event for systemd, and systemd knows no event after it up to t."""
    calendar_spec = parse_calendar(spec)
    for base in BASES:
        previous = calendar_spec.previous(base)
        if previous is None:
            _, (first,) = systemd_calendar(spec, utc(1970, 1, 1), iterations=1)
            assert first is None or first > base, f"base {base}"
            continue
        _, (again, after) = systemd_calendar(spec, previous - timedelta(seconds=1), iterations=2)
        assert again == previous, f"base {base}"
        assert after is None or after > base, f"base {base}"


@needs_systemd
@pytest.mark.parametrize("spec", [spec for spec, _ in INVALID])
def test_systemd_rejects_the_invalid_specs_too(spec):
    run = subprocess.run([SYSTEMD_ANALYZE, "calendar", spec], env={**os.environ, "TZ": "UTC"}, capture_output=True)
    assert run.returncode != 0


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SPECS), st.datetimes(datetime(1971, 1, 1), datetime(2190, 1, 1), timezones=st.just(UTC)))
@example("*:0/30 Europe/Berlin", utc(2024, 10, 27, 1, 10))  # inside the repeated hour
@example("*-*-* 02:30 Europe/Berlin", utc(2024, 10, 27, 1, 45))
@example("*:0/30 Australia/Lord_Howe", utc(2024, 4, 6, 15, 10))
def test_previous_and_next_agree(spec, t):
    calendar_spec = parse_calendar(spec)
    previous, next = calendar_spec.previous(t), calendar_spec.next(t)
    if next is not None:
        assert next > t and calendar_spec.previous(next) == next
    if previous is not None:
        assert previous <= t and calendar_spec.next(previous) == next
