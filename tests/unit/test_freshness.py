"""facts.borg.freshness: the contract's status of one job, from its repo listing and the host's records."""

from datetime import datetime, timedelta, timezone

from facts.borg import ClientState, freshness
from pyinfra_backup.borg import Archive, RepoListing
from pyinfra_backup.enrollment import plan_jobs
from pyinfra_backup.records import Attempt, JobRecords

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
[PLANNED] = plan_jobs("host01", {"borgbackup": {"jobs": {"system": {
    "paths": ["/etc"], "repo": "/srv/repo", "encryption": {"mode": "none"}, "startAt": "daily"}}}}, {})
LISTING = RepoListing(exists=True, archives=(
    Archive("host01-system-2026-11-27T11:00:00", NOW - timedelta(hours=1)),
    Archive("host01-system-2026-11-27T11:30:00.checkpoint", NOW - timedelta(minutes=30)),
))


def state(records: JobRecords) -> ClientState:
    return ClientState(hostname="host01", key=None, known_hosts="", records={"system": records})


def test_an_archive_since_the_last_event_is_fresh_and_a_checkpoint_is_not_an_archive():
    entry = freshness(PLANNED, state(JobRecords()), LISTING, NOW)
    assert entry["status"] == "fresh" and entry["last_archive"] == "host01-system-2026-11-27T11:00:00"
    only_checkpoint = RepoListing(exists=True, archives=LISTING.archives[1:])
    assert freshness(PLANNED, state(JobRecords()), only_checkpoint, NOW)["status"] == "missing"


def test_a_failed_last_check_is_an_error_never_fresh():
    failed = JobRecords(check=Attempt(NOW - timedelta(minutes=5), 1), check_ok=NOW - timedelta(days=2))
    entry = freshness(PLANNED, state(failed), LISTING, NOW)
    assert entry["status"] == "error" and entry["due"] is False
    assert entry["error"] == "the last borg check failed (2026-11-27T11:55:00Z, exit status 1)"
    passed = JobRecords(check=Attempt(NOW, 0), check_ok=NOW)
    assert freshness(PLANNED, state(passed), LISTING, NOW)["status"] == "fresh"
