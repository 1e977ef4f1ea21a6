"""systemd calendar events (``OnCalendar=``, NixOS ``startAt``) and whether a backup is due.

A borg job's ``startAt`` is one calendar spec or a list of them. A job is due when its repository
holds no archive made since the schedule's most recent event:

>>> schedule = Schedule.parse(["Mon..Fri 02:00", "Sat 12:00"])
>>> now = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)          # a Sunday
>>> schedule.previous(now)
datetime.datetime(2024, 3, 9, 12, 0, tzinfo=datetime.timezone.utc)
>>> schedule.due_state(datetime(2024, 3, 8, 2, 5, tzinfo=UTC), now)
'due'

Syntax, as in systemd.time(7) "CALENDAR EVENTS" and systemd 252 (``systemd-analyze calendar``):

- shorthands: minutely, hourly, daily, weekly, monthly, quarterly, semiannually (also
  semi-annually, biannually, bi-annually), yearly, annually; case does not matter;
- ``[WEEKDAYS] [DATE] [TIME] [TIMEZONE]``: weekdays ``Mon`` or ``Monday`` in any case, joined by
  ``,`` and ranges ``Mon..Fri`` (or ``Mon-Fri``); DATE ``[YEAR-]MONTH-DAY`` (default ``*-*-*``),
  or ``[YEAR-]MONTH~DAY`` for the DAY-th last day of the month; TIME ``HOUR:MINUTE[:SECOND]``
  (default ``00:00:00``, seconds default to ``00``);
- every field is ``*`` or a comma list of ``N``, ``N/STEP`` (N, N+STEP, ... up to the field's
  maximum) and ``N..M[/STEP]``; two-digit years mean 2000..2069 and 1970..1999; years run
  1970..2199;
- ``@SECONDS`` since the epoch (one event, in UTC);
- a trailing time zone: ``UTC`` (any case) or an IANA name (``Europe/Berlin``).

Unlike systemd: fractional seconds (``12:00:00.5``) are rejected; and a zone abbreviation such as
``CET`` always means the IANA zone of that name (systemd reads the host's own abbreviations, e.g.
``CET`` on a host in Europe/Berlin, as that host's zone in winter).

Time zones: a spec without one is evaluated in UTC, because the fleet's hosts are compared on one
clock; systemd itself would use each host's local time zone. With a zone, fields match that zone's
wall clock. Wall-clock times that a DST change skips have no event; times that it repeats have one,
at the first occurrence (systemd also fires the second one if it computes from inside the repeated
hour). All datetimes given to this module must be aware; all it returns are in UTC.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cached_property
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MIN_YEAR, MAX_YEAR = 1970, 2199  # systemd's limits
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY_NUMBERS = {name: i for i, day in enumerate(_DAY_NAMES) for name in (day, day[:3])}
_SHORTHANDS = {
    "minutely": "*-*-* *:*:00",
    "hourly": "*-*-* *:00:00",
    "daily": "*-*-* 00:00:00",
    "weekly": "Mon *-*-* 00:00:00",
    "monthly": "*-*-01 00:00:00",
    "quarterly": "*-01,04,07,10-01 00:00:00",
    **dict.fromkeys(("semiannually", "semi-annually", "biannually", "bi-annually"), "*-01,07-01 00:00:00"),
    **dict.fromkeys(("yearly", "annually", "anually"), "*-01-01 00:00:00"),  # "anually": systemd's old typo
}
_BOUNDS = {
    "year": (MIN_YEAR, MAX_YEAR), "month": (1, 12), "day": (1, 31), "hour": (0, 23), "minute": (0, 59), "second": (0, 59)
}
_ITEM = re.compile(r"([0-9]+)(?:\.\.([0-9]+))?(?:/([0-9]+))?")
_DATE = re.compile(r"(?:([^-~]+)-)?([^-~]+)([-~])([^-~]+)")

DueState = Literal["fresh", "due", "stale", "missing"]


@dataclass(frozen=True)
class Component:
    """One item of a field's comma list: ``start``, ``start/repeat`` or ``start..stop[/repeat]``.

    >>> list(Component(2, None, 6).values(23))
    [2, 8, 14, 20]
    """

    start: int
    stop: int | None = None
    repeat: int = 0  # 0: just ``start``

    def values(self, last: int) -> range:
        """The values matched, up to ``last``."""
        stop = self.start if not self.repeat else last if self.stop is None else self.stop
        return range(self.start, min(stop, last) + 1, self.repeat or 1)

    def from_end(self, length: int) -> Component:
        """This item of days counted back from the end (``~``) as days of a ``length``-day month."""
        mirror = length + 1
        if self.stop is None:
            return Component(mirror - self.start, None, self.repeat)
        return Component(mirror - self.stop, mirror - self.start, self.repeat)

    def format(self, width: int) -> str:
        text = f"{self.start:0{width}}"
        if self.stop is not None:
            text += f"..{self.stop:0{width}}"
        if self.repeat and not (self.stop is not None and self.repeat == 1):
            text += f"/{self.repeat}"
        return text


Field = tuple[Component, ...] | None  # None: "*"


@dataclass(frozen=True)
class CalendarSpec:
    """A parsed calendar spec; build it with :func:`parse_calendar`.

    >>> spec = parse_calendar("Mon *-*-* 02:00")
    >>> spec.normalized
    'Mon *-*-* 02:00:00'
    >>> spec.next(datetime(2024, 1, 1, 2, 0, tzinfo=UTC))
    datetime.datetime(2024, 1, 8, 2, 0, tzinfo=datetime.timezone.utc)
    """

    weekdays: frozenset[int]  # 0 is Monday
    year: Field
    month: Field
    day: Field
    hour: Field
    minute: Field
    second: Field
    end_of_month: bool = False  # ``day`` counts back from the month's last day (``~``)
    timezone: str | None = None  # "UTC", an IANA name, or None (UTC too, unmarked)

    @property
    def normalized(self) -> str:
        """The spec as systemd-analyze prints its "Normalized form"."""

        def text(field: Field, width: int = 2) -> str:
            return "*" if field is None else ",".join(item.format(width) for item in field)

        date = f"{text(self.year, 4)}-{text(self.month)}{'~' if self.end_of_month else '-'}{text(self.day)}"
        time = f"{text(self.hour)}:{text(self.minute)}:{text(self.second)}"
        weekdays = _format_weekdays(self.weekdays) if len(self.weekdays) < 7 else None
        return " ".join(filter(None, (weekdays, date, time, self.timezone)))

    def next(self, t: datetime) -> datetime | None:
        """The first event after ``t``, or None if there is none (before the end of 2199)."""
        local = _aware(t).astimezone(self._zone)
        for wall in self._walk(local.replace(tzinfo=None, microsecond=0), forward=True):
            if (event := self._instant(wall)) and event > t:
                return event
        return None

    def previous(self, t: datetime) -> datetime | None:
        """The last event at or before ``t``, or None if there is none (since 1970).

        >>> parse_calendar("*-*~01 23:00").previous(datetime(2024, 3, 10, tzinfo=UTC))
        datetime.datetime(2024, 2, 29, 23, 0, tzinfo=datetime.timezone.utc)
        """
        local = _aware(t).astimezone(self._zone)
        # In the second pass through a repeated hour, the first pass of the whole hour is past.
        ahead = local.replace(fold=0).utcoffset() - local.utcoffset()
        for wall in self._walk((local.replace(tzinfo=None) + ahead).replace(microsecond=0), forward=False):
            if (event := self._instant(wall)) and event <= t:
                return event
        return None

    @cached_property
    def _zone(self) -> tzinfo:
        return _zone(self.timezone or "UTC")

    @cached_property
    def _columns(self) -> tuple[list[int] | None, ...]:
        """Matching years, months, (days: see `_days`), hours, minutes and seconds."""
        return tuple(
            None if name == "day" else _expand(getattr(self, name), *bounds) for name, bounds in _BOUNDS.items()
        )

    @cached_property
    def _days_by_length(self) -> dict[int, list[int]]:
        """Matching days of the month, before the weekday filter, by the month's length."""
        if self.end_of_month:
            return {n: _expand(tuple(item.from_end(n) for item in self.day), 1, n) for n in range(28, 32)}
        return {n: _expand(self.day, 1, n) for n in range(28, 32)}

    def _days(self, year: int, month: int) -> list[int]:
        first_weekday, length = calendar.monthrange(year, month)
        return [d for d in self._days_by_length[length] if (first_weekday + d - 1) % 7 in self.weekdays]

    def _walk(self, start: datetime, forward: bool) -> Iterator[datetime]:
        """Matching wall-clock times from the naive ``start`` on (inclusive), or back from it.

        Steps field by field, years first, so it never visits a non-matching value twice.
        """
        bound = (start.year, start.month, start.day, start.hour, start.minute, start.second)

        def walk(prefix: tuple[int, ...], tight: bool) -> Iterator[datetime]:
            level = len(prefix)
            if level == 6:
                yield datetime(*prefix)
                return
            values = self._days(*prefix) if level == 2 else self._columns[level]
            for value in values if forward else reversed(values):
                if tight and (value < bound[level] if forward else value > bound[level]):
                    continue
                yield from walk((*prefix, value), tight and value == bound[level])

        return walk((), True)

    def _instant(self, wall: datetime) -> datetime | None:
        """The wall-clock time ``wall`` in UTC (its first occurrence), or None if DST skips it."""
        event = wall.replace(tzinfo=self._zone).astimezone(UTC)
        return event if event.astimezone(self._zone).replace(tzinfo=None) == wall else None


def parse_calendar(spec: str) -> CalendarSpec:
    """Parse a systemd calendar spec; raise ValueError saying what is wrong.

    >>> parse_calendar("Sat,Mon..Wed 2024-*-1,15 4:00 Europe/Berlin").normalized
    'Mon..Wed,Sat 2024-*-01,15 04:00:00 Europe/Berlin'
    >>> parse_calendar("Mon *-*-* 25:00")
    Traceback (most recent call last):
    ValueError: invalid calendar spec "Mon *-*-* 25:00": hour 25 out of range 0..23
    """
    try:
        return _parse(spec)
    except ValueError as error:
        raise ValueError(f'invalid calendar spec "{spec}": {error}') from None


@dataclass(frozen=True)
class Schedule:
    """A job's ``startAt``: any number of calendar specs, whose events all count.

    >>> daily = Schedule.parse("daily")
    >>> daily.due_state(datetime(2024, 3, 8, 23, 0, tzinfo=UTC), datetime(2024, 3, 10, 12, 0, tzinfo=UTC))
    'stale'
    """

    specs: tuple[CalendarSpec, ...]

    @classmethod
    def parse(cls, spec: str | Iterable[str]) -> Schedule:
        """Parse one spec or a list of them (an empty list, as in NixOS, means "never")."""
        return cls(tuple(map(parse_calendar, [spec] if isinstance(spec, str) else spec)))

    @property
    def normalized(self) -> str:
        """Normalized forms joined by "; ", or "never"."""
        return "; ".join(spec.normalized for spec in self.specs) or "never"

    def next(self, t: datetime) -> datetime | None:
        """The first event of any spec after ``t``."""
        return min(filter(None, (spec.next(t) for spec in self.specs)), default=None)

    def previous(self, t: datetime) -> datetime | None:
        """The last event of any spec at or before ``t``."""
        return max(filter(None, (spec.previous(t) for spec in self.specs)), default=None)

    def due_state(self, last_archive_time: datetime | None, now: datetime) -> DueState:
        """How the newest archive compares with the events up to ``now``.

        "fresh": made at or after the last event (or there was no event yet); "due": made before
        the last event, but at or after the one before it; "stale": older; "missing": no archive.
        """
        if last_archive_time is None:
            return "missing"
        last_event = self.previous(now)
        if last_event is None or last_archive_time >= last_event:
            return "fresh"
        event_before = self.previous(last_event - timedelta(microseconds=1))
        if event_before is None or last_archive_time >= event_before:
            return "due"
        return "stale"


def _parse(spec: str) -> CalendarSpec:
    if spec != spec.strip() or not spec:
        raise ValueError("leading or trailing whitespace" if spec else "empty")
    body, timezone = _split_timezone(spec)
    body = _SHORTHANDS.get(body.lower(), body)
    if body.startswith("@"):
        body, timezone = _timestamp(body[1:]), "UTC"
    tokens = [token for token in body.split(" ") if token]
    weekdays = _parse_weekdays(tokens.pop(0)) if tokens[0][0].isalpha() else frozenset(range(7))
    date = tokens.pop(0) if tokens and ":" not in tokens[0] else "*-*-*"
    time = tokens.pop(0) if tokens else "00:00:00"
    if tokens:
        raise ValueError(f"unexpected {' '.join(tokens)!r} after the time")

    match = _DATE.fullmatch(date)
    if not match:
        raise ValueError(f"bad date {date!r}: expected [YEAR-]MONTH-DAY or [YEAR-]MONTH~DAY, or a time HOUR:MINUTE")
    year, month, separator, day = match.groups()
    end_of_month = separator == "~" and day != "*"
    times = time.split(":")
    if len(times) not in (2, 3):
        raise ValueError(f"bad time {time!r}: expected HOUR:MINUTE or HOUR:MINUTE:SECOND")
    hour, minute, second = [*times, "00"][:3]
    return CalendarSpec(
        weekdays=weekdays,
        year=_parse_field("year", year or "*"),
        month=_parse_field("month", month),
        day=_parse_field("day", day, end_of_month),
        hour=_parse_field("hour", hour),
        minute=_parse_field("minute", minute),
        second=_parse_field("second", second),
        end_of_month=end_of_month,
        timezone=timezone,
    )


def _split_timezone(spec: str) -> tuple[str, str | None]:
    """Split a trailing time zone off: dates and times start with a digit, "*" or "@"."""
    head, _, last = spec.rpartition(" ")
    if not head.strip() or not last[0].isalpha():
        return spec, None
    if last.upper() == "UTC":
        return head, "UTC"
    _zone(last)
    return head, last


def _zone(name: str) -> tzinfo:
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _timestamp(seconds: str) -> str:
    """``@SECONDS`` as a date and time in UTC."""
    if not (seconds.isascii() and seconds.isdigit()):
        raise ValueError(f"bad timestamp '@{seconds}': expected @SECONDS since 1970")
    try:
        return f"{datetime.fromtimestamp(int(seconds), UTC):%Y-%m-%d %H:%M:%S}"
    except (OverflowError, ValueError, OSError):
        raise ValueError(f"timestamp @{seconds} out of range") from None


def _parse_weekdays(text: str) -> frozenset[int]:
    if text.lower() in _SHORTHANDS:
        raise ValueError(f"{text!r} is a shorthand and cannot be combined with other fields")
    items = text.split(",")
    if len(items) > 1 and not items[-1]:
        items.pop()  # systemd allows "Wed, 17:48"
    days: set[int] = set()
    for item in items:
        first, dash, last = item.replace("..", "-").partition("-")
        low = _weekday(first, text)
        high = _weekday(last, text) if dash else low
        if high < low:
            raise ValueError(f"weekday range {item!r} runs backwards (ranges cannot wrap past Sunday)")
        days.update(range(low, high + 1))
    return frozenset(days)


def _weekday(name: str, text: str) -> int:
    try:
        return _WEEKDAY_NUMBERS[name.lower()]
    except KeyError:
        raise ValueError(f"bad weekday {name!r} in {text!r}: expected e.g. Mon, Monday, Mon..Fri") from None


def _parse_field(name: str, text: str, end_of_month: bool = False) -> Field:
    """Parse one date or time field, normalized (sorted, deduplicated) and checked like systemd."""
    if text == "*":
        return None
    low, high = (1, 28) if end_of_month else _BOUNDS[name]  # "~29" and beyond: systemd refuses
    tilde = "~" if end_of_month else ""
    items = set()
    for item in text.split(","):
        match = _ITEM.fullmatch(item)
        if not match:
            if name == "second" and re.search(r"[0-9]\.[0-9]", item):
                raise ValueError(f"fractional seconds are not supported: {item!r}")
            hint = " ('*' stands alone: write 0/15, not */15)" if "*" in item else ""
            raise ValueError(f"bad {name} {item!r}: expected *, N, N/STEP, N..M or N..M/STEP{hint}")
        start, stop, repeat = (None if group is None else int(group) for group in match.groups())
        if name == "year":
            start, stop = _full_year(start), _full_year(stop)
        if repeat == 0:
            raise ValueError(f"{name} {item!r}: the step must be at least 1")
        if name == "second" and repeat is None and stop is not None and stop <= start:
            raise ValueError(f"second range {item!r} must rise")  # systemd's rule for seconds only
        component = _component(start, stop, 1 if repeat is None and stop is not None else repeat or 0)
        for value in (component.start, component.stop):
            if value is not None and not low <= value <= high:
                raise ValueError(f"{name} {tilde}{value} out of range {tilde}{low}..{tilde}{high}")
        if component.repeat > high - low:
            raise ValueError(f"{name} {item!r}: step {component.repeat} is longer than {low}..{high}")
        if component.stop is not None and component.stop < component.start:
            raise ValueError(f"{name} range {item!r} runs backwards")
        if component.stop is None and component.repeat:
            next_value = component.start - component.repeat if end_of_month else component.start + component.repeat
            if not low <= next_value <= high:
                raise ValueError(f"{name} {tilde}{item} never repeats within {tilde}{low}..{tilde}{high}")
        items.add(component)
    if name == "second" and Component(0, None, 1) in items:
        return None  # every second; systemd prints it as "*"
    return tuple(sorted(items, key=lambda c: (c.start, -1 if c.stop is None else c.stop, c.repeat)))


def _component(start: int, stop: int | None, repeat: int) -> Component:
    """An item as systemd normalizes it: ``1..10/4`` is ``1..9/4``; ``5..5`` and ``1..3/5`` are one value."""
    if stop is not None and stop >= start:
        stop -= (stop - start) % repeat
        if stop == start:
            return Component(start)
    return Component(start, stop, repeat)


def _full_year(year: int | None) -> int | None:
    """Two-digit years as systemd reads them: 00..69 are 2000..2069, 70..99 are 1970..1999."""
    if year is None or year >= 100:
        return year
    return year + (2000 if year < 70 else 1900)


def _expand(field: Field, low: int, high: int) -> list[int]:
    if field is None:
        return list(range(low, high + 1))
    return sorted({value for item in field for value in item.values(high)})


def _format_weekdays(days: frozenset[int]) -> str:
    """Weekdays as systemd prints them: runs of three or more as ``Mon..Wed``."""
    runs: list[list[int]] = []
    for day in sorted(days):
        if runs and runs[-1][1] == day - 1:
            runs[-1][1] = day
        else:
            runs.append([day, day])
    return ",".join(
        WEEKDAYS[a] if a == b else f"{WEEKDAYS[a]}{',' if b == a + 1 else '..'}{WEEKDAYS[b]}" for a, b in runs
    )


def _aware(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"naive datetime {t.isoformat()}: give a timezone-aware one")
    return t
