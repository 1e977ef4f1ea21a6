"""A real prometheus-node-exporter (Debian package) with only the textfile collector, for tests.

    with NodeExporter("/var/lib/prometheus/node-exporter", fleet=fleet, host="host01") as ne:
        assert ne.value("borg_backup_last_attempt_success", host="host01", borg_job="system") == 1
        assert ne.value("node_textfile_scrape_error") == 0          # node_exporter accepted the file

Inside a fleet host (`fleet` + `host`: the directory is a path inside that host, node_exporter
listens on the host's address, port 9100 by default, in its own network namespace) or on this
machine (`fleet=None`: 127.0.0.1 on a free port). Scrapes never go through a proxy.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import in_host

BINARY = "prometheus-node-exporter"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeExporter:
    def __init__(self, textfile_dir: str | Path, fleet=None, host: str | None = None, port: int | None = None):
        if shutil.which(BINARY) is None:
            raise RuntimeError(f"{BINARY} is not installed (scripts/install.sh installs it)")
        if (fleet is None) != (host is None):
            raise ValueError("give both fleet and host, or neither")
        self.textfile_dir = str(textfile_dir)
        self.fleet, self.host = fleet, host
        address = fleet.host(host).address if fleet else "127.0.0.1"
        self.port = port or (9100 if fleet else free_port())
        self.address = f"{address}:{self.port}"
        self.url = f"http://{self.address}/metrics"
        self.process: subprocess.Popen | None = None
        self.log = b""

    def argv(self) -> list[str]:
        return [BINARY, "--collector.disable-defaults", "--collector.textfile",
                f"--collector.textfile.directory={self.textfile_dir}", "--web.disable-exporter-metrics",
                f"--web.listen-address={self.address}"]

    def start(self, timeout: float = 10) -> NodeExporter:
        argv = self.argv()
        if self.fleet:
            argv = in_host(self.fleet, self.host, "exec " + " ".join(argv))
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.log = self.process.stderr.read()
                raise RuntimeError(f"node_exporter exited with {self.process.returncode}: {self.log.decode()[-2000:]}")
            try:
                self.scrape(timeout=1)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"node_exporter did not answer on {self.url} within {timeout}s") from None
                time.sleep(0.05)

    def _pids(self) -> list[int]:
        """node_exporter's own pid(s): inside a host, the children of nsenter (which forks for --pid)."""
        pid = self.process.pid
        if not self.fleet:
            return [pid]
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            children = []
        return [int(child) for child in children] + [pid]

    def stop(self) -> None:
        if self.process is None:
            return
        for pid in self._pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            for pid in self._pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.wait(5)
        self.log = self.process.stderr.read()
        self.process.stderr.close()
        self.process = None

    def __enter__(self) -> NodeExporter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def scrape(self, timeout: float = 5) -> str:
        """The text of /metrics."""
        with _OPENER.open(self.url, timeout=timeout) as response:
            return response.read().decode()

    def families(self) -> dict:
        """{name: prometheus_client Metric} of one scrape."""
        return {family.name: family for family in text_string_to_metric_families(self.scrape())}

    def samples(self, name: str) -> list:
        """Every sample of the metric `name` in one scrape."""
        return [s for f in text_string_to_metric_families(self.scrape()) for s in f.samples if s.name == name]

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample of `name` whose labels include `labels`, None if absent."""
        found = [s.value for s in self.samples(name) if all(s.labels.get(k) == v for k, v in labels.items())]
        if len(found) > 1:
            raise AssertionError(f"{len(found)} samples of {name} match {labels}")
        return found[0] if found else None
