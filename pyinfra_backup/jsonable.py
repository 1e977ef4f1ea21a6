"""Fact values printable as JSON by `pyinfra INVENTORY fact facts.X.Y` (pure).

pyinfra's CLI prints a fact's value with `json.dumps(..., default=pyinfra_cli.util.json_encode)`, which
calls `to_json()` on objects it does not know. Our facts return dataclasses; `JsonFact` gives them that
method (a mixin: no fields, nothing changes for Python callers, who keep the dataclass):

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Seen(JsonFact):
...     at: datetime
...     tags: frozenset
>>> Seen(datetime(2026, 1, 2, tzinfo=timezone.utc), frozenset({"b", "a"})).to_json()
{'at': '2026-01-02T00:00:00+00:00', 'tags': ['a', 'b']}
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from pathlib import PurePath
from typing import Any


def to_jsonable(value: Any) -> Any:
    """`value` as JSON types: dataclasses as objects of their fields, sets sorted, times in ISO 8601,
    durations in seconds; anything else unknown as its `str`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((to_jsonable(item) for item in value), key=lambda item: (str(type(item)), str(item)))
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class JsonFact:
    """Mixin for a dataclass returned by a fact: `to_json()` is what pyinfra's fact printing uses."""

    def to_json(self) -> Any:
        return to_jsonable(self)


__all__ = ["JsonFact", "to_jsonable", "timezone"]
