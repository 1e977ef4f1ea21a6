"""Reading the restore drill's report (pyinfra_backup/drill.py); tests/integration/test_drill_local.py runs it."""

from datetime import UTC, datetime, timedelta

from pyinfra_backup.borg import Archive, Job, RepoListing, archive_glob
from pyinfra_backup.drill import newest_archive, parse_drill
from pyinfra_backup.validate import host_data_errors


def test_a_drill_without_an_end_is_a_failure():
    report = parse_drill(["::drill:: archive a", "::drill:: files 3 0", "::drill:: selected 3 30"])
    assert report.failed and report.summary() == "drill failed: the drill stopped before its end"
    long = parse_drill(["::drill:: archive a", *(f"::drill:: gone p{i}" for i in range(12)), "::drill:: compared 1",
                        "::drill:: end"])
    assert not long.failed and long.summary().endswith("12 skipped, gone from the host: " + ", ".join(
        f"/p{i}" for i in range(10)) + " and 2 more")


def test_a_mismatch_or_an_unextracted_file_fails_skips_do_not():
    lines = ["::drill:: archive a", "::drill:: files 9 1", "::drill:: selected 3 30", "::drill:: changed srv/x",
             "::drill:: unreadable srv/y", "::drill:: compared 1", "::drill:: end"]
    report = parse_drill(["noise from borg", *lines])
    assert not report.failed and (report.files, report.odd_names, report.selected_bytes) == (9, 1, 30)
    assert report.summary() == ("drill of a: 1 of 3 sampled files compared (30 bytes, 9 regular files in the archive); "
                                "1 skipped, changed since the archive: /srv/x; 1 skipped, unreadable on the host: /srv/y; "
                                "1 files with a newline in the name never sampled")
    assert parse_drill([*lines[:-1], "::drill:: unextracted srv/z", "::drill:: end"]).failed
    error = parse_drill(["::drill:: error cannot list the repo: Connection closed by remote host"])
    assert error.failed and error.summary() == "drill failed: cannot list the repo: Connection closed by remote host"


def test_drill_settings_default_and_are_validated():
    base = {"repo": "/r", "paths": ["/etc"], "encryption": {"mode": "none"}}
    job = Job.from_data("system", base)
    assert (job.drill_files, job.drill_max_bytes) == (32, 64 << 20)
    off = Job.from_data("system", {**base, "checks": {"drillFiles": 0, "drillMaxBytes": 0}})
    assert (off.drill_files, off.drill_max_bytes) == (0, 0)
    bad = {**base, "checks": {"drillFiles": 10001, "drillMaxBytes": -1}}
    assert host_data_errors("h", {"borgbackup": {"jobs": {"system": bad}}}) == [
        "h: borgbackup.jobs.system.checks.drillFiles: expected an integer from 0 to 10000, got 10001",
        "h: borgbackup.jobs.system.checks.drillMaxBytes: expected a number of bytes >= 0, got -1",
    ]


def test_a_garbled_count_reads_as_zero():
    report = parse_drill(["::drill:: files ", "::drill:: selected 3", "::drill:: compared x", "::drill:: end"])
    assert (report.files, report.odd_names, report.selected, report.selected_bytes, report.compared) == (0, 0, 3, 0, 0)


def test_the_newest_archive_matching_the_glob_checkpoints_left_out():
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    names = [("h-system-2026-11-26T12:00:00", 24), ("h-system-2026-11-27T11:00:00.checkpoint", 1),
             ("h-system-state-2026-11-27T10:00:00", 2), ("h-system-2026-11-27T09:00:00", 3)]
    listing = RepoListing(exists=True, archives=tuple(Archive(n, now - timedelta(hours=h)) for n, h in names))
    assert newest_archive(listing, archive_glob("h-system")).name == "h-system-2026-11-27T09:00:00"
    assert newest_archive(listing, "h-system-state-*").name == "h-system-state-2026-11-27T10:00:00"
    assert newest_archive(listing, "h-db-*") is None and newest_archive(RepoListing(exists=False), "*") is None


def test_a_drill_that_compared_no_file_fails_saying_so():
    report = parse_drill(["::drill:: archive a", "::drill:: files 3 0", "::drill:: selected 2 30", "::drill:: changed p",
                          "::drill:: gone q", "::drill:: compared 0", "::drill:: end"])
    assert report.failed
    assert report.summary().startswith("drill failed: no file compared, nothing verified (drill of a: 0 of 2 sampled")
