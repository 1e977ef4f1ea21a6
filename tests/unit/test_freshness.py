"""Freshness of one job (facts.borg.freshness): a repo whose last borg check failed is never fresh."""

from datetime import UTC, datetime, timedelta

from facts.borg import ClientState, freshness
from pyinfra_backup.borg import Archive, Job, Location, RepoListing
from pyinfra_backup.enrollment import PlannedJob
from pyinfra_backup.records import parse_records

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
JOB = PlannedJob(Job.from_data("system", {"repo": "/r", "paths": ["/etc"], "encryption": {"mode": "none"}}), Location("/r"))
LISTING = RepoListing(exists=True, archives=(Archive("h-system-2026-11-27T01:00:00", NOW - timedelta(hours=11)),))


def entry(check: str | None) -> dict:
    state = ClientState(hostname="h", key=None, known_hosts="", records={"system": parse_records({"check": check})})
    return freshness(JOB, state, LISTING, NOW)


def test_a_passed_check_leaves_the_status_to_the_schedule():
    assert entry(f"{int(NOW.timestamp()) - 60} 0")["status"] == "fresh"
    assert entry(None)["status"] == "fresh"


def test_a_failed_check_puts_the_repo_in_error_although_borg_list_reads_it():
    failed = entry(f"{int(NOW.timestamp()) - 4 * 3600} 1")
    assert failed["status"] == "error" and failed["due"] is False
    assert failed["error"] == "the last borg check failed (exit status 1, 2026-11-27 08:00 UTC)"
    assert failed["last_archive"] == "h-system-2026-11-27T01:00:00"


def test_an_archive_since_the_last_event_is_fresh_and_a_checkpoint_is_not_an_archive():
    daily = PlannedJob(Job.from_data("system", {"repo": "/r", "paths": ["/etc"], "encryption": {"mode": "none"},
                                                "startAt": "daily"}), Location("/r"))
    listing = RepoListing(exists=True, archives=(
        Archive("h-system-2026-11-27T11:00:00", NOW - timedelta(hours=1)),
        Archive("h-system-2026-11-27T11:30:00.checkpoint", NOW - timedelta(minutes=30)),
    ))
    state = ClientState(hostname="h", key=None, known_hosts="", records={"system": parse_records({})})
    entry = freshness(daily, state, listing, NOW)
    assert entry["status"] == "fresh" and entry["last_archive"] == "h-system-2026-11-27T11:00:00"
    only_checkpoint = RepoListing(exists=True, archives=listing.archives[1:])
    assert freshness(daily, state, only_checkpoint, NOW)["status"] == "missing"


def test_a_torn_record_makes_the_job_unknown_and_due_whatever_the_repo_says():
    state = ClientState(hostname="h", key=None, known_hosts="",
                        records={"system": parse_records({"create": '{"archive": {}}{"arch'})})
    torn = freshness(JOB, state, LISTING, NOW)
    assert torn["status"] == "unknown" and torn["due"] is True
    assert "unreadable record last-create.json in /var/lib/pyinfra-backup/jobs/system" in torn["error"]
    assert torn["last_archive"] == "h-system-2026-11-27T01:00:00"  # the repo's own listing still shows
