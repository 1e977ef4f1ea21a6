"""Prometheus metrics of a host's borg jobs, as a node_exporter textfile (pure: no I/O).

    text = render_textfile("host01", {"system": job_metrics_from_records(...)})

The file goes to `monitoring.textfile_dir` as `borg_backup.prom` (`TEXTFILE_NAME`), written
atomically: write `.borg_backup.prom.<pid>` in the same directory, then rename it (node_exporter
reads only `*.prom`, so it never sees a half-written file). One file per host holds every job.

Metrics (gauges; labels `host` = inventory name, `borg_job` = `borgbackup.jobs.<job>`; a metric whose
value is unknown is left out, never written as 0): see `METRICS`.

Records kept per job on the host (`pyinfra_backup.records`, read by the client fact)
-----------------------------------------------------------------------------------

`job_metrics_from_records` takes a `records.JobRecords` (or anything with its four attributes):

- `create`: `last-create.json`, the `borg create --json` output of the last successful create
  (borg ran with TZ=UTC, so its naive `archive.start` / `archive.end` are UTC)::

    {"archive": {"name", "start", "end", "duration",
                 "stats": {"original_size", "compressed_size", "deduplicated_size", "nfiles"}},
     "cache": {"stats": {"unique_csize", ...}}, "repository": {...}, "encryption": {...}}

- `attempt`: `Attempt(time, rc, error)` of the last create attempt (`last-attempt`: `<unix time> <rc>`,
  rc 0 also for a warning accepted by `failOnWarnings = false`);
- `check`: `Attempt(time, rc, error)` of the last `borg check` (`last-check`);
- `check_ok`: datetime of the last successful check (`last-check-ok`), used when `check` is absent.

Not on the host, given by the caller: the number of the job's archives (from the listing after
create and prune), the job's `startAt`, and the repo's `quota` (`borgbackup.repos.<client>.quota`
on the server, borg's `--storage-quota` syntax).

The textfile depends only on these (never on the time of rendering): a run that changes nothing
renders the same bytes.

Where each value comes from
---------------------------

- last_success: borg's `archive.end` of the create record;
- last_attempt / last_attempt_success: the attempt record's time and `rc == 0`; without one (or
  when it is older than the create record by a second or more), the create record's success;
- duration: borg's `archive.duration`;
- original / compressed / deduplicated bytes: `archive.stats` of the last archive;
- repo used: `cache.stats.unique_csize` (compressed, deduplicated size of all archives as the
  client's borg cache counts it; borg's quota also counts segment overhead and not-yet-compacted
  data, so the real use is a little higher);
- last_check / last_check_success: the check record's time and `rc == 0`, else `check_ok` (a success);
- due: the first calendar event of `startAt` after the last archive's `archive.start` (the time
  `facts.borg.BackupFreshness` compares), i.e. when the job stops being "fresh";
- tampered: the operator's archive ledger (`pyinfra_backup/ledger.py`), for fleet repos with `prune.keep`;
- schedule period: the seconds from that event to the next one, so that
  `time() >= due + period` is exactly the fact's "stale" (no archive since the event before the
  last one). For a regular schedule it is the schedule's period (hourly: 3600).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any

from pyinfra_backup.schedule import Schedule

TEXTFILE_NAME = "borg_backup.prom"
LABELS = ("host", "borg_job")  # label names of (inventory host name, backup job name); not `job`: Prometheus' own


@dataclass(frozen=True)
class JobMetrics:
    """One job's values; None leaves the metric out. Timestamps are unix seconds."""

    last_success: float | None = None
    last_attempt: float | None = None
    last_attempt_success: bool | None = None
    duration: float | None = None
    original_bytes: int | None = None
    compressed_bytes: int | None = None
    deduplicated_bytes: int | None = None
    archives: int | None = None
    last_check: float | None = None
    last_check_success: bool | None = None
    repo_quota_bytes: int | None = None
    repo_used_bytes: int | None = None
    due: float | None = None
    schedule_period: float | None = None
    tampered: bool | None = None


@dataclass(frozen=True)
class Metric:
    name: str
    field: str  # JobMetrics attribute
    help: str
    type: str = "gauge"


METRICS: tuple[Metric, ...] = (
    Metric("borg_backup_last_success_timestamp_seconds", "last_success",
           "Unix time the last successful borg create of the job finished."),
    Metric("borg_backup_last_attempt_timestamp_seconds", "last_attempt",
           "Unix time the last borg create attempt of the job finished, successful or not."),
    Metric("borg_backup_last_attempt_success", "last_attempt_success",
           "1 if the last borg create attempt of the job succeeded, 0 if it failed."),
    Metric("borg_backup_duration_seconds", "duration",
           "Duration of the last successful borg create of the job."),
    Metric("borg_backup_original_bytes", "original_bytes",
           "Original size of the job's last archive."),
    Metric("borg_backup_compressed_bytes", "compressed_bytes",
           "Compressed size of the job's last archive."),
    Metric("borg_backup_deduplicated_bytes", "deduplicated_bytes",
           "Deduplicated size of the job's last archive: what it added to the repo."),
    Metric("borg_backup_archives", "archives",
           "Number of the job's archives in its repo (checkpoints not counted)."),
    Metric("borg_backup_last_check_timestamp_seconds", "last_check",
           "Unix time the last borg check of the job's repo finished."),
    Metric("borg_backup_last_check_success", "last_check_success",
           "1 if the last borg check of the job's repo succeeded, 0 if it failed."),
    Metric("borg_backup_repo_quota_bytes", "repo_quota_bytes",
           "Storage quota of the job's repo (borg serve --storage-quota)."),
    Metric("borg_backup_repo_used_bytes", "repo_used_bytes",
           "Bytes stored in the job's repo (compressed and deduplicated, all archives)."),
    Metric("borg_backup_due_timestamp_seconds", "due",
           "Unix time of the first calendar event (startAt) after the job's last archive: it is due from then."),
    Metric("borg_backup_schedule_period_seconds", "schedule_period",
           "Seconds from the due event to the next calendar event: stale when time() >= due + period."),
    Metric("borg_backup_tampered", "tampered",
           "1 if archives vanished from the job's fleet repo that no operator prune removed: prune and compact "
           "of it stopped until an operator acknowledges it (tasks.borg.acknowledge_tampering)."),
)
METRIC_NAMES = frozenset(m.name for m in METRICS)
assert {m.field for m in METRICS} == {f.name for f in fields(JobMetrics)}

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*$")


def escape_label_value(value: str) -> str:
    """Text format escaping of a label value: backslash, double quote, line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float | int | bool) -> str:
    """A sample value as the text format writes it (Go's ParseFloat reads it back)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def render_textfile(host: str, jobs: Mapping[str, JobMetrics]) -> str:
    """node_exporter textfile (Prometheus text format 0.0.4) of a host's jobs, jobs sorted by name.

    A metric family appears (with its `# HELP` and `# TYPE`) only when at least one job has a value.
    """
    lines = []
    for metric in METRICS:
        samples = [(job, getattr(values, metric.field)) for job, values in sorted(jobs.items())]
        samples = [(job, value) for job, value in samples if value is not None]
        if not samples:
            continue
        lines.append(f"# HELP {metric.name} {_escape_help(metric.help)}")
        lines.append(f"# TYPE {metric.name} {metric.type}")
        for job, value in samples:
            labels = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in zip(LABELS, (host, job)))
            lines.append(f"{metric.name}{{{labels}}} {format_value(value)}")
    return "\n".join(lines) + "\n" if lines else ""


# ----------------------------------------------------------------------------- from records

_QUOTA = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPEZY]?)\s*", re.I)
_QUOTA_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
                "Z": 10**21, "Y": 10**24}


def parse_quota(quota: str | int | None) -> int | None:
    """`borg serve --storage-quota` syntax in bytes: decimal units as borg's parse_file_size
    (`100G` = 100 * 10**9). None, "" and 0 mean no quota."""
    if quota is None or quota == "":
        return None
    if isinstance(quota, int):
        return quota or None
    match = _QUOTA.fullmatch(quota)
    if not match:
        raise ValueError(f"not a borg storage quota: {quota!r} (expected e.g. 500M, 100G, 2T)")
    size = int(float(match.group(1)) * _QUOTA_UNITS[match.group(2).upper()])
    return size or None


def _unix(value) -> float | None:
    """Unix seconds from a number, an aware datetime, or borg's naive ISO time (UTC, TZ=UTC)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    raise TypeError(f"not a time: {value!r}")


def _int(value) -> int | None:
    return None if value is None or isinstance(value, bool) else int(value)


def _attempt(attempt: Any) -> tuple[float | None, bool | None]:
    """(unix time, success) of a `records.Attempt`, or (None, None)."""
    if attempt is None:
        return None, None
    return _unix(attempt.time), attempt.rc == 0


def schedule_times(start_at: str | Iterable[str], last_archive: datetime) -> tuple[float | None, float | None]:
    """(due, period) in unix seconds / seconds for a job whose newest archive started at `last_archive`."""
    schedule = Schedule.parse(start_at)
    due = schedule.next(last_archive)
    if due is None:
        return None, None
    after = schedule.next(due)
    return due.timestamp(), (after - due).total_seconds() if after else None


def job_metrics_from_records(
    records: Any = None,
    *,
    archives: int | None = None,
    start_at: str | Iterable[str] | None = None,
    quota: str | int | None = None,
    tampered: bool | None = None,
) -> JobMetrics:
    """One job's metrics from its `records.JobRecords` (module docstring) and what the caller knows:
    `archives`: the job's archive count; `start_at`: its `startAt` (due and period need it and a
    create record); `quota`: its repo's quota ("100G" or bytes); `tampered`: whether the archive
    ledger holds its fleet repo as tampered (None: no ledger, a repo not pruned by the operator)."""
    create = getattr(records, "create", None) or {}
    archive = create.get("archive") or {}
    stats = archive.get("stats") or {}
    cache_stats = (create.get("cache") or {}).get("stats") or {}
    last_success = _unix(archive.get("end") or archive.get("start"))
    duration = archive.get("duration")

    attempt_time, attempt_success = _attempt(getattr(records, "attempt", None))
    # the attempt record has whole seconds: a success more than 1 s newer is a newer attempt
    if last_success is not None and (attempt_time is None or last_success - attempt_time >= 1):
        attempt_time, attempt_success = last_success, True

    check_time, check_success = _attempt(getattr(records, "check", None))
    check_ok = getattr(records, "check_ok", None)
    if check_time is None and check_ok is not None:
        check_time, check_success = _unix(check_ok), True

    due = period = None
    if start_at is not None and archive.get("start"):
        due, period = schedule_times(start_at, datetime.fromtimestamp(_unix(archive["start"]), timezone.utc))

    return JobMetrics(
        last_success=last_success,
        last_attempt=attempt_time,
        last_attempt_success=attempt_success,
        duration=None if duration is None else float(duration),
        original_bytes=_int(stats.get("original_size")),
        compressed_bytes=_int(stats.get("compressed_size")),
        deduplicated_bytes=_int(stats.get("deduplicated_size")),
        archives=_int(archives),
        last_check=check_time,
        last_check_success=check_success,
        repo_quota_bytes=parse_quota(quota),
        repo_used_bytes=_int(cache_stats.get("unique_csize")),
        due=due,
        schedule_period=period,
        tampered=tampered,
    )
