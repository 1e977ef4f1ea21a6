"""A real Prometheus (Debian's `prometheus`) scrapes a real node_exporter on a test host serving the
textfile pyinfra_backup.metrics renders: the backup job arrives as `borg_job`, and the target's own
`job` label (the scrape job) is untouched, without `honor_labels`."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pyinfra_backup.metrics import TEXTFILE_NAME, job_metrics_from_records, render_textfile
from pyinfra_backup.records import Attempt, JobRecords
from tests.integration.node_exporter import NodeExporter, free_port

pytestmark = pytest.mark.fleet

TEXTFILE_DIR = "/var/lib/pbk-prom-scrape"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Prometheus:
    """`prometheus` on 127.0.0.1 (a free port), its TSDB in `workdir`; always killed on exit."""

    def __init__(self, workdir: Path, targets: list[str], scrape_job: str = "node"):
        if shutil.which("prometheus") is None:
            pytest.fail("prometheus is missing: scripts/install.sh installs Debian's prometheus package", pytrace=False)
        self.workdir, self.port = workdir, free_port()
        self.config = workdir / "prometheus.yml"
        self.config.write_text(json.dumps({  # JSON is YAML; the scrape config is prometheus.yml's, minus rules
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": scrape_job, "static_configs": [{"targets": targets}]}],
        }))
        self.process: subprocess.Popen | None = None
        self.log = workdir / "prometheus.log"

    def __enter__(self) -> Prometheus:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["prometheus", f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def query(self, promql: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with _OPENER.open(url, timeout=5) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def wait_for(self, promql: str, timeout: float = 30) -> list[dict]:
        """The query's result once it is not empty (bounded: fails after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                result = self.query(promql)
                if result:
                    return result
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f"no {promql} within {timeout}s: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)


def test_a_real_prometheus_scrape_keeps_borg_job_and_the_scrape_job(fleet_factory, tmp_path):
    fleet = fleet_factory(["host01"])
    records = JobRecords(create={"archive": {"start": "2026-01-02T03:00:05", "end": "2026-01-02T03:01:10"}},
                         attempt=Attempt(datetime(2026, 1, 2, 3, 1, 11, tzinfo=UTC), 0))
    text = render_textfile("host01", {"system": job_metrics_from_records(records, archives=3, start_at="daily")})
    path = f"{TEXTFILE_DIR}/{TEXTFILE_NAME}"
    fleet.run("host01", f"mkdir -p {TEXTFILE_DIR} && cat > {path}.tmp && mv {path}.tmp {path}", input=text)
    with NodeExporter(TEXTFILE_DIR, fleet=fleet, host="host01") as exporter, \
            Prometheus(tmp_path, [exporter.address]) as prometheus:
        assert not exporter.address.startswith("127.")  # the host's own address, in its namespace
        [series] = prometheus.wait_for("borg_backup_archives")
        assert series["metric"] == {"__name__": "borg_backup_archives", "host": "host01", "borg_job": "system",
                                    "job": "node", "instance": exporter.address}
        assert series["value"][1] == "3"
        assert prometheus.query('{exported_job!=""}') == []  # nothing renamed
        [up] = prometheus.query("up")
        assert up["metric"]["job"] == "node" and up["value"][1] == "1"
        due = prometheus.query('borg_backup_due_timestamp_seconds{job="node",borg_job="system",host="host01"}')
        assert float(due[0]["value"][1]) == datetime(2026, 1, 3, tzinfo=UTC).timestamp()
    assert prometheus.process.poll() is not None  # stopped
