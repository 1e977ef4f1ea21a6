"""A real prometheus-node-exporter serves the textfile that pyinfra_backup.metrics renders."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pyinfra_backup.metrics import METRICS, TEXTFILE_NAME, JobMetrics, job_metrics_from_records, render_textfile
from pyinfra_backup.records import Attempt, JobRecords
from tests.integration.node_exporter import NodeExporter

pytestmark = pytest.mark.fleet

TEXTFILE_DIR = "/var/lib/pbk-node-exporter"
CREATE = {
    "archive": {
        "name": "host01-system-2026-01-02T03:00:05", "start": "2026-01-02T03:00:05.000000",
        "end": "2026-01-02T03:01:10.500000", "duration": 65.5,
        "stats": {"original_size": 12_345_678_901, "compressed_size": 4_000_000_000,
                  "deduplicated_size": 1_234_567, "nfiles": 4321},
    },
    "cache": {"stats": {"unique_csize": 95_000_000_000}},
}


def jobs() -> dict[str, JobMetrics]:
    ok = JobRecords(create=CREATE, attempt=Attempt(datetime(2026, 1, 2, 3, 1, 11, tzinfo=UTC), 0),
                    check=Attempt(datetime(2025, 12, 20, tzinfo=UTC), 0))
    failed = JobRecords(attempt=Attempt(datetime(2026, 1, 2, 4, tzinfo=UTC), 2, "the repo is locked"),
                        check=Attempt(datetime(2025, 12, 21, tzinfo=UTC), 1))
    return {
        "system": job_metrics_from_records(ok, archives=12, start_at="daily", quota="100G"),
        "db": job_metrics_from_records(failed, archives=0, start_at="hourly"),
    }


def assert_served(ne: NodeExporter, host: str, expected: dict[str, JobMetrics]) -> None:
    assert ne.value("node_textfile_scrape_error") == 0  # node_exporter parsed the file
    served = {(s.name, s.labels["borg_job"]): s.value
              for m in METRICS for s in ne.samples(m.name) if s.labels.get("host") == host}
    wanted = {(m.name, job): float(getattr(values, m.field))
              for m in METRICS for job, values in expected.items() if getattr(values, m.field) is not None}
    assert served == wanted


def test_node_exporter_in_a_fleet_host_serves_the_rendered_textfile(fleet):
    expected = jobs()
    text = render_textfile("host01", expected)
    path = f"{TEXTFILE_DIR}/{TEXTFILE_NAME}"
    fleet.run("host01", f"rm -rf {TEXTFILE_DIR} && mkdir -p {TEXTFILE_DIR} && cat > {path}.tmp && mv {path}.tmp {path}",
              input=text)
    try:
        with NodeExporter(TEXTFILE_DIR, fleet=fleet, host="host01") as ne:
            assert ne.address.startswith(fleet.host("host01").address + ":")
            assert_served(ne, "host01", expected)
            assert ne.value("borg_backup_last_attempt_success", host="host01", borg_job="db") == 0
            assert ne.value("borg_backup_original_bytes", borg_job="system") == 12_345_678_901
            assert ne.value("borg_backup_due_timestamp_seconds", borg_job="system") == datetime(
                2026, 1, 3, tzinfo=UTC).timestamp()
            assert ne.value("node_textfile_mtime_seconds", file=path) is not None
            assert ne.families()["borg_backup_archives"].type == "gauge"

            # the next run's file replaces it atomically; the next scrape has the new values
            newer = {**expected, "db": JobMetrics(last_attempt=1.8e9, last_attempt_success=True, archives=1)}
            fleet.run("host01", f"cat > {path}.tmp && mv {path}.tmp {path}", input=render_textfile("host01", newer))
            assert_served(ne, "host01", newer)
        pid_gone = fleet.run("host01", f"pgrep -f '[t]extfile.directory={TEXTFILE_DIR}'", check=False)
        assert pid_gone.returncode == 1, pid_gone.stdout  # stopped inside the host, not left behind
    finally:
        fleet.run("host01", f"rm -rf {TEXTFILE_DIR}", check=False)


def test_node_exporter_on_loopback_keeps_escaped_labels_and_flags_a_broken_file(tmp_path):
    weird = {'we"ird\\job\nname': JobMetrics(archives=3, last_attempt_success=False)}
    (tmp_path / TEXTFILE_NAME).write_text(render_textfile("host-x", weird))
    with NodeExporter(tmp_path) as ne:
        assert ne.address.startswith("127.0.0.1:")
        assert_served(ne, "host-x", weird)
        (tmp_path / "broken.prom").write_text("borg_backup_archives{borg_job=\"unterminated} 1\n")
        assert ne.value("node_textfile_scrape_error") == 1  # so 0 above means node_exporter accepted ours
