"""Which archives `borg prune` would delete, decided from a listing we already have.

Same rules as borg 1.2's `do_prune` (helpers/misc.py `prune_within`/`prune_split`),
so a prune operation can say "nothing to prune" without running borg, and runs
borg only when borg will delete something. Times are UTC (borg runs with TZ=UTC).

>>> from datetime import datetime, timezone, timedelta
>>> now = datetime(2026, 11, 27, tzinfo=timezone.utc)
>>> days = [Archive(f"a{i}", now - timedelta(days=i)) for i in range(5)]
>>> [a.name for a in to_prune(days, {"daily": 2}, now)]
['a2', 'a3', 'a4']
"""

from __future__ import annotations

from datetime import datetime
from collections.abc import Mapping, Sequence

from pyinfra_backup.borg import Archive, parse_interval

PERIODS = {
    "secondly": "%Y-%m-%d %H:%M:%S",
    "minutely": "%Y-%m-%d %H:%M",
    "hourly": "%Y-%m-%d %H",
    "daily": "%Y-%m-%d",
    "weekly": "%G-%V",
    "monthly": "%Y-%m",
    "yearly": "%Y",
}
def _split(archives: Sequence[Archive], rule: str, count: int, kept: set[str]) -> None:
    """Keep the newest archive of each of the last `count` periods (-1: of every period)."""
    if count == 0:
        return
    last, kept_here, archive = None, 0, None
    for archive in sorted(archives, key=lambda a: a.time, reverse=True):
        period = archive.time.strftime(PERIODS[rule])
        if period != last:
            last = period
            if archive.name not in kept:
                kept.add(archive.name)
                kept_here += 1
                if kept_here == count:
                    return
    if count > 0 and archive is not None and archive.name not in kept:  # borg keeps the oldest when short
        kept.add(archive.name)


def to_prune(archives: Sequence[Archive], keep: Mapping[str, int | str], now: datetime) -> list[Archive]:
    """Archives (checkpoints included) that `borg prune` with these `--keep-*` rules deletes, newest first."""
    ordered = sorted(archives, key=lambda a: a.time, reverse=True)
    checkpoints = [a for a in ordered if a.is_checkpoint]
    finished = [a for a in ordered if not a.is_checkpoint]
    kept: set[str] = set()
    if ordered and ordered[0].is_checkpoint:  # the newest checkpoint is kept when nothing finished since
        kept.add(ordered[0].name)
    if "within" in keep:
        horizon = now - parse_interval(str(keep["within"]))
        kept.update(a.name for a in finished if a.time > horizon)
    for rule in PERIODS:
        if rule in keep:
            _split(finished, rule, int(keep[rule]), kept)
    return [a for a in ordered if a.name not in kept]
