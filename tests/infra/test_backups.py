"""Each job of each host: backed up recently, its repo readable from the host, checked recently.

Read with the `BackupFreshness` fact's own command, run on the host (one command per host)."""

from __future__ import annotations

from datetime import datetime, timezone

from pyinfra_backup.fleet_checks import check_overdue
from pyinfra_backup.report import format_age


def test_backup_is_fresh(fleet, infra_job):
    host, job = infra_job
    entry = fleet.backups(host)["freshness"][job]
    age = format_age(entry["age_seconds"])
    assert entry["status"] in ("fresh", "due"), (
        f"{host}: job {job}: {entry['status']}: last archive {entry['last_archive'] or '-'} ({age} old) "
        f"in {entry['repo']}" + (f": {entry['error']}" if entry["error"] else ""))


def test_repo_is_reachable(fleet, infra_job):
    host, job = infra_job
    listing = fleet.backups(host)["listings"][job]
    repo = fleet.job_data(host)[job].repo
    assert listing.error is None, f"{host}: job {job}: borg list {repo} failed: {listing.error}"
    assert listing.exists, f"{host}: job {job}: no repo at {repo} (or the host has no backup key yet)"


def test_last_check_is_recent(fleet, infra_checked_job):
    host, job = infra_checked_job
    data = fleet.job_data(host)[job]
    records = fleet.backups(host)["records"][job]
    problem = check_overdue(records.check_ok, data.check_frequency, data.start_at, datetime.now(timezone.utc))
    assert problem is None, f"{host}: job {job}: {problem}"
