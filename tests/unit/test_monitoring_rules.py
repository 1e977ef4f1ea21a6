"""docs/monitoring: alert rules and example config checked and unit-tested by promtool (Debian's
`prometheus` package), the Grafana dashboard loads and uses only metrics that metrics.py writes, and
the rules agree with the freshness fact on rendered metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pyinfra_backup.metrics import METRIC_NAMES, job_metrics_from_records
from pyinfra_backup.records import JobRecords
from pyinfra_backup.schedule import Schedule

DOCS = Path(__file__).resolve().parents[2] / "docs/monitoring"
ALERTS = DOCS / "alerts.yml"
DASHBOARD = DOCS / "grafana-dashboard.json"
METRIC = re.compile(r"\bborg_backup_[a-z_]+\b")
GRAFANA_VARS = {"$host": ".*", "$borg_job": ".*", "${host}": ".*", "${borg_job}": ".*"}


def promtool(*args: str, cwd: Path = DOCS) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: scripts/install.sh installs Debian's prometheus package", pytrace=False)
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def alert_names(text: str) -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", text, re.M)


def test_promtool_checks_the_rules_and_the_example_config():
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 8 rules found" in rules.stdout  # 7 alerts and the schedule interval
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_of_every_alert_pass():
    run = promtool("test", "rules", "alerts_test.yml")
    assert run.returncode == 0, run.stdout + run.stderr
    names = alert_names(ALERTS.read_text())
    assert names == ["BorgBackupStale", "BorgBackupFailed", "BorgCheckOverdue", "BorgCheckFailed", "BorgRepoNearQuota",
                     "BorgRepoTampered", "BorgSchedulerStopped"]
    tested = set(re.findall(r"alertname: (\w+)", (DOCS / "alerts_test.yml").read_text()))
    assert tested == set(names)


def test_rules_use_only_metrics_that_exist():
    used = set(METRIC.findall(ALERTS.read_text()))
    assert used and used <= METRIC_NAMES, used - METRIC_NAMES


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = []

    def walk(panels):
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return exprs


def test_dashboard_loads_and_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "Backup Status" and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"host", "borg_job"} <= set(variables) and "job" not in variables
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    assert len(set(ids)) == len(ids)
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("freshness", "since last success", "fail", "check", "size", "quota"):
        assert topic in titles, topic


def test_dashboard_uses_every_metric_and_no_other():
    text = DASHBOARD.read_text()
    assert set(METRIC.findall(text)) == METRIC_NAMES


def test_every_dashboard_expression_is_valid_promql(tmp_path):
    """promtool parses each query (Grafana variables replaced) as a recording rule."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dashboard)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(SELECTOR, label): the selector must parse
            exprs.append(re.fullmatch(r"label_values\((.+), *\w+\)", variable["definition"]).group(1))
    assert len(exprs) > 20
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(exprs):
        for name, value in GRAFANA_VARS.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, expr
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(expr)}"]
    (tmp_path / "dashboard.yml").write_text("\n".join(lines) + "\n")
    run = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def humanize_duration(seconds: float) -> str:
    """Prometheus' humanizeDuration for whole seconds >= 60."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d {hours}h {minutes}m {secs}s" if days else f"{hours}h {minutes}m {secs}s"


def test_alerts_and_dashboard_state_agree_with_the_freshness_fact_on_rendered_metrics(tmp_path):
    """Metrics rendered for archives of known freshness; promtool evaluates the stale alert and the
    dashboard's state column on them. promtool's clock starts at 0: times are shifted to it."""
    now = datetime(2026, 3, 10, 12, 34, 56, tzinfo=UTC)
    eval_time = 600  # promtool evaluates at 10m = `now`
    shift = now.timestamp() - eval_time
    cases = {  # job: (startAt, archive start)
        "fresh_hourly": ("hourly", now - timedelta(minutes=20)),
        "due_hourly": ("hourly", now - timedelta(minutes=50)),
        "stale_hourly": ("hourly", now - timedelta(hours=3)),
        "fresh_daily": ("daily", now - timedelta(hours=12)),
        "due_daily": ("daily", now - timedelta(hours=20)),
        "stale_weekdays": ("Mon..Fri 02:00", now - timedelta(days=3)),
    }
    later = now + timedelta(minutes=6)  # the alert has `for: 5m`: evaluated 6 minutes later
    series, expected_state, stale = [], {}, {}
    for job, (start_at, archive) in cases.items():
        state = Schedule.parse(start_at).due_state(archive, now)
        assert job.startswith(state)
        expected_state[job] = {"fresh": 0, "due": 1, "stale": 2}[state]
        if state == "stale":
            stale[job] = (later - archive - timedelta(seconds=30)).total_seconds()  # since the archive's end
        create = {"archive": {"start": archive.replace(tzinfo=None).isoformat(),
                              "end": (archive + timedelta(seconds=30)).replace(tzinfo=None).isoformat()}}
        m = job_metrics_from_records(JobRecords(create=create), start_at=start_at)
        for name, value in (("borg_backup_last_success_timestamp_seconds", m.last_success - shift),
                            ("borg_backup_due_timestamp_seconds", m.due - shift),
                            ("borg_backup_schedule_period_seconds", m.schedule_period)):
            series.append({"series": f'{name}{{host="h",borg_job="{job}"}}', "values": f"{value:.0f}+0x20"})

    dashboard = json.loads(DASHBOARD.read_text())
    [table] = [p for p in dashboard["panels"] if p["title"] == "Freshness per host and job"]
    state_expr = table["targets"][0]["expr"]
    for name, value in GRAFANA_VARS.items():
        state_expr = state_expr.replace(name, value)
    (tmp_path / "rules.yml").write_text(json.dumps({"groups": [
        {"name": "dashboard", "rules": [{"record": "dashboard:state", "expr": state_expr}]}]}))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    assert all(Schedule.parse(s).due_state(a, later) == Schedule.parse(s).due_state(a, now) for s, a in cases.values())
    test = {
        "rule_files": ["alerts.yml", "rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{
                "expr": "dashboard:state", "eval_time": "10m",
                "exp_samples": [{"labels": f'dashboard:state{{host="h",borg_job="{job}"}}', "value": value}
                                for job, value in expected_state.items()],
            }],
            "alert_rule_test": [{
                "eval_time": "16m", "alertname": "BorgBackupStale",
                "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "host": "h", "borg_job": job},
                    "exp_annotations": {
                        "summary": f"Backup {job} on h is stale",
                        "description": f"The last successful backup of job {job} on h is {humanize_duration(age)} old: "
                                       "it missed more than one scheduled run (startAt).",
                    },
                } for job, age in stale.items()],
            }],
        }],
    }
    (tmp_path / "test.yml").write_text(json.dumps(test))  # JSON is YAML
    run = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_no_rule_panel_or_legend_uses_prometheus_own_job_label():
    """The backup job is `borg_job`: `job` is the scrape job Prometheus sets on every series."""
    for path in (ALERTS, DOCS / "alerts_test.yml", DASHBOARD):
        text = path.read_text()
        assert "borg_job" in text, path
        for pattern in (r"\$labels\.job\b", r"[{,(]\s*job\s*[=!~]", r"\{\{job\}\}", r"\bon \(host, job\)", r"[$]job\b",
                        r",\s*job\)"):
            assert not re.search(pattern, text), (path.name, pattern)
    assert "honor_labels:" not in (DOCS / "prometheus.yml").read_text()


def test_scheduler_stopped_fires_on_rendered_metrics_of_a_job_due_and_not_attempted(tmp_path):
    """Metrics rendered from a host's records (pyinfra_backup.metrics), promtool evaluating the alert: a daily job
    whose last archive is from yesterday is due since midnight; an hour later, with no attempt since, it fires;
    with a (failed) attempt after midnight, or 20 minutes after midnight, it does not."""
    from pyinfra_backup.records import Attempt

    midnight = datetime(2026, 3, 10, tzinfo=UTC)
    create = {"archive": {"start": "2026-03-09T00:00:05", "end": "2026-03-09T00:01:05"}}
    cases = {  # job: (attempt record, evaluated at)
        "stopped": (Attempt(datetime(2026, 3, 9, 0, 1, 6, tzinfo=UTC), 0), midnight + timedelta(hours=1)),
        "attempted": (Attempt(midnight + timedelta(minutes=20), 2, "locked"), midnight + timedelta(hours=1)),
        "recent": (Attempt(datetime(2026, 3, 9, 0, 1, 6, tzinfo=UTC), 0), midnight + timedelta(minutes=20)),
    }
    eval_time = 600
    series, expected = [], []
    for job, (attempt, now) in cases.items():
        shift = now.timestamp() - eval_time  # promtool's clock: `now` is 10m
        m = job_metrics_from_records(JobRecords(create=create, attempt=attempt), start_at="daily")
        assert m.due == midnight.timestamp()
        for name, value in (("borg_backup_due_timestamp_seconds", m.due - shift),
                            ("borg_backup_last_attempt_timestamp_seconds", m.last_attempt - shift)):
            series.append({"series": f'{name}{{host="h",borg_job="{job}"}}', "values": f"{value:.0f}+0x20"})
        if job == "stopped":
            expected.append({"exp_labels": {"severity": "warning", "host": "h", "borg_job": job}, "exp_annotations": {
                "summary": "No backup run reached stopped on h",
                "description": "Job stopped on h has been due for 1h 0m 0s and no run attempted it since (scheduled "
                               "every 15m 0s): is the scheduler running on the operator's machine (systemctl status "
                               "pyinfra-backup.timer, journalctl -u pyinfra-backup) and does it reach the host?"}})
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    test = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [{"eval_time": "10m", "alertname": "BorgSchedulerStopped", "exp_alerts": expected}],
    }]}
    (tmp_path / "test.yml").write_text(json.dumps(test))
    run = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
