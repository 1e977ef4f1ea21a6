"""The node_exporter textfile of a host's borg jobs, read back with prometheus_client's parser."""

import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from pyinfra_backup.metrics import (
    METRIC_NAMES, METRICS, TEXTFILE_NAME, JobMetrics, format_value, job_metrics_from_records, parse_quota,
    render_textfile,
)
from pyinfra_backup.records import Attempt, JobRecords
from pyinfra_backup.schedule import Schedule

FULL = JobMetrics(
    last_success=1_700_000_100.5, last_attempt=1_700_000_100.5, last_attempt_success=True, duration=12.25,
    original_bytes=1_000_000, compressed_bytes=400_000, deduplicated_bytes=12_345, archives=7,
    last_check=1_699_000_000, last_check_success=True, repo_quota_bytes=100 * 10**9, repo_used_bytes=5 * 10**9,
    due=1_700_006_400, schedule_period=3600, tampered=False,
)
FIELD_OF = {m.name: m.field for m in METRICS}


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text):
    """{(name, host, job): value} of every sample."""
    return {(s.name, s.labels["host"], s.labels["borg_job"]): s.value for f in families(text).values() for s in f.samples}


def test_every_metric_with_help_type_labels_and_value():
    text = render_textfile("host01", {"system": FULL})
    fams = families(text)
    assert set(fams) == METRIC_NAMES
    for metric in METRICS:
        fam = fams[metric.name]
        assert fam.type == "gauge" and fam.documentation == metric.help
        [sample] = fam.samples
        assert sample.name == metric.name and sample.labels == {"host": "host01", "borg_job": "system"}
        assert sample.value == float(getattr(FULL, metric.field))
    assert text.count("# HELP ") == text.count("# TYPE ") == len(METRICS)
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_names_follow_prometheus_conventions():
    for metric in METRICS:
        assert metric.name.startswith("borg_backup_") and metric.name.islower()
        assert not metric.name.endswith("_total")  # gauges, not counters
        if "timestamp" in metric.name or "duration" in metric.name or "period" in metric.name:
            assert metric.name.endswith("_seconds")
        if "bytes" in metric.name:
            assert metric.name.endswith("_bytes")
    assert len(METRIC_NAMES) == len(METRICS) == 15


def test_jobs_sorted_and_grouped_under_one_header_per_family():
    text = render_textfile("h", {"zeta": FULL, "alpha": JobMetrics(archives=1)})
    lines = [line for line in text.splitlines() if line.startswith("borg_backup_archives")]
    assert lines == ['borg_backup_archives{host="h",borg_job="alpha"} 1', 'borg_backup_archives{host="h",borg_job="zeta"} 7']
    assert text.count("# TYPE borg_backup_archives gauge") == 1


def test_unknown_values_are_left_out_not_zero():
    text = render_textfile("h", {"a": JobMetrics(last_attempt=5.0, last_attempt_success=False), "b": JobMetrics()})
    assert samples(text) == {
        ("borg_backup_last_attempt_timestamp_seconds", "h", "a"): 5.0,
        ("borg_backup_last_attempt_success", "h", "a"): 0.0,
    }
    assert "borg_backup_original_bytes" not in text  # no family header without a sample
    assert render_textfile("h", {}) == render_textfile("h", {"b": JobMetrics()}) == ""


def test_label_values_are_escaped():
    host, job = 'we"ird\\host', "line\nbreak"
    text = render_textfile(host, {job: JobMetrics(archives=3)})
    assert r'host="we\"ird\\host",borg_job="line\nbreak"' in text
    assert samples(text) == {("borg_backup_archives", host, job): 3.0}
    assert len(text.splitlines()) == 3


def test_values_are_exact():
    assert format_value(True) == "1" and format_value(False) == "0"
    assert format_value(2**60) == str(2**60)  # bytes stay exact, no float rounding
    assert format_value(1_700_000_100.0) == "1700000100"
    assert format_value(0.1) == "0.1" and format_value(float("nan")) == "NaN"
    assert format_value(float("inf")) == "+Inf" and format_value(float("-inf")) == "-Inf"
    text = render_textfile("h", {"j": JobMetrics(original_bytes=2**60, duration=0.1)})
    assert samples(text)[("borg_backup_original_bytes", "h", "j")] == float(2**60)


CREATE = {  # borg 1.2 `create --json`, run with TZ=UTC
    "archive": {
        "name": "host01-system-2024-03-10T12:00:05", "start": "2024-03-10T12:00:05.000000",
        "end": "2024-03-10T12:00:17.250000", "duration": 12.25, "id": "ab" * 32,
        "stats": {"original_size": 568, "compressed_size": 487, "deduplicated_size": 480, "nfiles": 1},
    },
    "cache": {"stats": {"total_chunks": 3, "unique_csize": 667, "unique_size": 813}},
    "encryption": {"mode": "repokey-blake2"},
    "repository": {"id": "cd" * 32, "location": "/srv/repo"},
}


def utc(*a):
    return datetime(*a, tzinfo=UTC)


def T(*a):
    return utc(*a).timestamp()


def test_job_metrics_from_a_successful_run():
    records = JobRecords(create=CREATE, attempt=Attempt(utc(2024, 3, 10, 12, 0, 17), 0),
                         check=Attempt(utc(2024, 3, 1, 0, 5), 0), check_ok=utc(2024, 3, 1, 0, 5))
    m = job_metrics_from_records(records, archives=4, start_at="hourly", quota="100G")
    assert m == JobMetrics(
        last_success=T(2024, 3, 10, 12, 0, 17, 250000), last_attempt=T(2024, 3, 10, 12, 0, 17),
        last_attempt_success=True, duration=12.25, original_bytes=568, compressed_bytes=487,
        deduplicated_bytes=480, archives=4, last_check=T(2024, 3, 1, 0, 5), last_check_success=True,
        repo_quota_bytes=100 * 10**9, repo_used_bytes=667, due=T(2024, 3, 10, 13), schedule_period=3600,
    )


def test_a_failed_attempt_after_an_older_success():
    records = JobRecords(create=CREATE, attempt=Attempt(utc(2024, 3, 11, 2, 0, 3), 2, "the repo is locked"))
    m = job_metrics_from_records(records, start_at="daily")
    assert (m.last_attempt, m.last_attempt_success) == (T(2024, 3, 11, 2, 0, 3), False)
    assert m.last_success == T(2024, 3, 10, 12, 0, 17, 250000)
    assert (m.due, m.schedule_period) == (T(2024, 3, 11), 86400)
    text = render_textfile("host01", {"system": m})
    assert samples(text)[("borg_backup_last_attempt_success", "host01", "system")] == 0.0


def test_an_attempt_record_older_than_the_create_record_is_superseded():
    m = job_metrics_from_records(JobRecords(create=CREATE, attempt=Attempt(utc(2024, 3, 9), 2)))
    assert (m.last_attempt, m.last_attempt_success) == (m.last_success, True)


def test_a_job_that_never_succeeded():
    m = job_metrics_from_records(JobRecords(attempt=Attempt(utc(2024, 3, 11), 2)), archives=0, start_at="daily")
    assert m == JobMetrics(last_attempt=T(2024, 3, 11), last_attempt_success=False, archives=0)


def test_without_an_attempt_record_the_success_is_the_last_attempt_and_check_ok_the_last_check():
    m = job_metrics_from_records(JobRecords(create=CREATE, check_ok=utc(2024, 2, 1)), start_at=["Mon..Fri 02:00"])
    assert (m.last_attempt, m.last_attempt_success) == (m.last_success, True)
    assert (m.last_check, m.last_check_success) == (T(2024, 2, 1), True)
    assert (m.due, m.schedule_period) == (T(2024, 3, 11, 2), 86400)  # Sunday noon -> Monday 02:00 -> Tuesday
    assert job_metrics_from_records(JobRecords(create=CREATE)).due is None  # no startAt, no due


def test_a_failed_check_and_no_records_at_all():
    m = job_metrics_from_records(JobRecords(check=Attempt(utc(2024, 3, 2), 1), check_ok=utc(2024, 3, 1)))
    assert (m.last_check, m.last_check_success) == (T(2024, 3, 2), False)
    assert job_metrics_from_records() == job_metrics_from_records(JobRecords()) == JobMetrics()
    assert job_metrics_from_records(JobRecords(), start_at=[]) == JobMetrics()


def test_rendering_does_not_depend_on_the_clock():
    records = JobRecords(create=CREATE, attempt=Attempt(utc(2024, 3, 10, 12, 0, 17), 0))
    first = render_textfile("h", {"j": job_metrics_from_records(records, archives=2, start_at="daily")})
    time.sleep(0.01)
    assert render_textfile("h", {"j": job_metrics_from_records(records, archives=2, start_at="daily")}) == first


def test_quota_as_borg_reads_it():
    assert parse_quota("100G") == 100 * 10**9 and parse_quota("1.5T") == 1_500 * 10**9
    assert parse_quota("500m") == 500 * 10**6 and parse_quota(12345) == 12345
    assert parse_quota(None) is parse_quota("") is parse_quota("0") is None
    with pytest.raises(ValueError, match="storage quota"):
        parse_quota("100GiB")


def test_textfile_name_is_read_by_node_exporter():
    assert TEXTFILE_NAME.endswith(".prom")


SPECS = ["hourly", "daily", "weekly", "Mon..Fri 02:00", "*-*-* 00/6:30", "monthly", ["Sat 12:00", "Tue 03:15"]]


@settings(max_examples=300, deadline=None)
@given(
    spec=st.sampled_from(SPECS),
    archive=st.datetimes(datetime(2023, 1, 1), datetime(2026, 1, 1), timezones=st.just(UTC)),
    later=st.timedeltas(timedelta(0), timedelta(days=70)),
)
def test_due_and_period_agree_with_the_freshness_fact(spec, archive, later):
    """time() < due: fresh; due <= time() < due + period: due; later: stale (Schedule.due_state)."""
    archive = archive.replace(microsecond=0)
    now = archive + later
    create = {"archive": {"start": archive.replace(tzinfo=None).isoformat()}}
    m = job_metrics_from_records(JobRecords(create=create), start_at=spec)
    t = now.timestamp()
    expected = "fresh" if t < m.due else "due" if t < m.due + m.schedule_period else "stale"
    assert Schedule.parse(spec).due_state(archive, now) == expected
