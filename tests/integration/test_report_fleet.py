"""The fleet freshness report (`python -m pyinfra_backup.report`) on the 5-host test fleet.

Each host gets local borg repos made here, with archives dated by `borg create --timestamp`, so that
every status occurs: fresh, due and stale (a schedule firing hourly at a minute 20 minutes ago, so
the next event is 40 minutes away from the test), missing (no repo) and error (wrong passphrase).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from pyinfra_backup.report import format_age, format_bytes, render_table
from pyinfra_backup.schedule import Schedule
from tests.integration.helpers import PROJECT

pytestmark = pytest.mark.fleet

BASE = "/var/lib/pbk-report"
CLIENTS = ["host01", "host02", "host03", "host04", "host05"]


def start_report(inventory, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pyinfra_backup.report", str(inventory), *args], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def report(inventory, *args) -> subprocess.CompletedProcess:
    return finish(start_report(inventory, *args))


def job(name, mode="none", start_at="daily", passphrase=None):
    data = {"paths": ["/srv/report-data"], "repo": f"{BASE}/{name}", "encryption": {"mode": mode},
            "startAt": start_at}
    if passphrase:
        data["encryption"]["passCommand"] = f"echo {passphrase}"
    return data


def make_repo(name, job_name, when, mode="none", passphrase="", created=True):
    """Shell lines making `BASE/job_name` with one archive of this host started at `when`, and,
    when `created`, the host's record of that create (what a backup run leaves)."""
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S")
    repo = f"{BASE}/{job_name}"
    lines = [
        f"export BORG_PASSPHRASE={passphrase!r} TZ=UTC BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes",
        f"borg init -e {mode} {repo}",
        f"borg create --json --timestamp {stamp} {repo}::{name}-{job_name}-{stamp} /srv/report-data"
        + (f" > /var/lib/pyinfra-backup/jobs/{job_name}/last-create.json" if created else " > /dev/null"),
    ]
    if created:  # a run's records: the create's JSON and its attempt (`<unix time> <rc>`), 30 s after the start
        lines.insert(0, f"mkdir -p /var/lib/pyinfra-backup/jobs/{job_name}")
        lines.append(f"echo '{int(when.timestamp()) + 30} 0' > /var/lib/pyinfra-backup/jobs/{job_name}/last-attempt")
    return lines


@pytest.fixture(scope="module")
def setup(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    now = datetime.now(UTC).replace(microsecond=0)
    minute = (now - timedelta(minutes=20)).minute
    hourly = f"*-*-* *:{minute:02d}:00"  # hourly, last event 20 min ago, next in 40 min
    last_event = Schedule.parse(hourly).previous(now)
    daily = f"*-*-* {last_event:%H:%M}:00"  # daily, last event 20 min ago: no race with midnight
    plan = {  # host -> {job: (data, shell lines)}
        "host01": {"rsystem": (job("rsystem", start_at=hourly),
                              make_repo("host01", "rsystem", now - timedelta(minutes=5))),
                   "rextra": (job("rextra"), [])},  # missing: no repo
        "host02": {"rapp": (job("rapp", start_at=hourly),
                           make_repo("host02", "rapp", last_event - timedelta(minutes=30)))},  # due
        "host03": {"rapp": (job("rapp", start_at=hourly),
                           make_repo("host03", "rapp", last_event - timedelta(hours=2), created=False))},  # stale
        "host04": {"rvault": (job("rvault", "repokey-blake2", passphrase="wrong-pass"),
                             make_repo("host04", "rvault", now - timedelta(hours=1), "repokey-blake2",
                                       "right-pass") + [  # then a failed attempt, 10 minutes ago
                                 f"printf '%s 2\\nthe repo is locked\\n' {int(now.timestamp()) - 600} "
                                 "> /var/lib/pyinfra-backup/jobs/rvault/last-attempt"])},  # error
        "host05": {"rvault": (job("rvault", "repokey-blake2", start_at=daily, passphrase="right-pass"),
                             make_repo("host05", "rvault", now - timedelta(minutes=10), "repokey-blake2",
                                       "right-pass"))},  # fresh
    }

    def clean(name):
        records = " ".join(f"/var/lib/pyinfra-backup/jobs/{j}" for j in plan[name])
        return f"rm -rf {BASE} /srv/report-data {records}"

    def prepare(name):
        lines = ["set -e", clean(name), f"mkdir -p {BASE} /srv/report-data", "echo report > /srv/report-data/file"]
        for _, commands in plan[name].values():
            lines += commands
        fleet.run(name, "\n".join(lines))

    with ThreadPoolExecutor(len(CLIENTS)) as pool:
        list(pool.map(prepare, CLIENTS))
    host_data = {name: {"borgbackup": {"jobs": {j: data for j, (data, _) in jobs.items()}}}
                 for name, jobs in plan.items()}
    inventory = fleet.write_inventory(tmp / "inventory.py", host_data, {"clients": CLIENTS, "servers": ["backup"]})
    yield {"fleet": fleet, "inventory": inventory, "tmp": tmp, "host_data": host_data}
    for name in CLIENTS:  # leave the shared fleet as we found it
        fleet.run(name, clean(name), check=False)


def write_inventory(setup, filename, names, extra=()):
    """An inventory of some fleet hosts with their data from the setup, plus `extra` (name, data) entries."""
    fleet = setup["fleet"]
    hosts = [(name, {**fleet.connection_data(name), **setup["host_data"].get(name, {})}) for name in names]
    path = setup["tmp"] / filename
    path.write_text(f"hosts = {[*hosts, *extra]!r}\n")
    return path


EXPECTED = {
    ("host01", "rsystem"): "fresh", ("host01", "rextra"): "missing", ("host02", "rapp"): "due",
    ("host03", "rapp"): "stale", ("host04", "rvault"): "error", ("host05", "rvault"): "fresh",
}


def test_json_lists_every_host_and_job_with_each_status_in_one_round_trip_per_host(setup):
    fleet = setup["fleet"]
    hosts = [*CLIENTS, "backup"]
    before = {name: fleet.exec_count(name) for name in hosts}
    run = report(setup["inventory"], "--json")
    after = {name: fleet.exec_count(name) for name in hosts}
    assert run.returncode == 1, run.stdout + run.stderr  # a stale job and an error
    data = json.loads(run.stdout)
    assert data["ok"] is False and list(data["hosts"]) == [*CLIENTS, "backup"]
    assert data["hosts"]["backup"] == {"reachable": True, "error": None, "jobs": {}, "last_attempt": None,
                                       "last_attempt_age_seconds": None}
    got = {(host, job): entry["status"] for host, h in data["hosts"].items() for job, entry in h["jobs"].items()}
    assert got == EXPECTED
    assert set(got.values()) == {"fresh", "due", "stale", "missing", "error"}
    for name in hosts:
        assert after[name] - before[name] == 1, (name, before, after)

    jobs = {(host, job): entry for host, h in data["hosts"].items() for job, entry in h["jobs"].items()}
    fresh = jobs["host01", "rsystem"]
    assert fresh["last_archive"].startswith("host01-rsystem-") and 5 * 60 <= fresh["age_seconds"] < 5 * 60 + 120
    assert fresh["original_size"] > 0 and fresh["deduplicated_size"] > 0  # from the host's create record
    assert jobs["host03", "rapp"]["original_size"] is None  # no record: no size, still listed
    assert jobs["host01", "rextra"]["last_archive"] is None and jobs["host01", "rextra"]["error"] is None
    assert "wrong passphrase" in jobs["host04", "rvault"]["error"] and "right-pass" not in run.stdout
    # once `-` after a wrong passphrase, as if no backup existed: the last archive its host recorded
    assert jobs["host04", "rvault"]["last_archive"].startswith("host04-rvault-"), jobs["host04", "rvault"]
    assert jobs["host05", "rvault"]["last_archive"].startswith("host05-rvault-")

    # the last attempt per job (the host's record) and per host (the newest of its jobs')
    assert fresh["last_attempt_ok"] is True and 5 * 60 - 30 <= fresh["last_attempt_age_seconds"] < 5 * 60 + 90
    assert data["hosts"]["host01"]["last_attempt"] == fresh["last_attempt"]  # rextra has none
    assert jobs["host01", "rextra"]["last_attempt"] is None and jobs["host03", "rapp"]["last_attempt"] is None
    failed = jobs["host04", "rvault"]
    assert failed["last_attempt_ok"] is False and 600 <= failed["last_attempt_age_seconds"] < 600 + 120, failed
    assert data["hosts"]["host03"]["last_attempt"] is None


@pytest.fixture(scope="module")
def runs(setup):
    """The reports after the first (which counts remote commands alone), run at once to save time."""
    with socket.socket() as s:  # a port on loopback that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ghost = {**setup["fleet"].connection_data("host01"), "ssh_hostname": "127.0.0.1", "ssh_port": port}
    started = {
        "table": start_report(setup["inventory"]),
        "ok": start_report(write_inventory(setup, "ok.py", ["host01", "host02"]), "--json", "--tolerate", "due,missing"),
        "strict": start_report(write_inventory(setup, "strict.py", ["host01", "host02"]), "--json"),
        "no jobs": start_report(write_inventory(setup, "no-jobs.py", ["backup"])),
        "invalid": start_report(write_inventory(setup, "invalid.py", ["host05"], [
            ("typo", {**setup["fleet"].connection_data("host05"), "borg_backup": {"jobs": {}}})])),
        "ghost": start_report(write_inventory(setup, "ghost.py", ["host05"], [("ghost", ghost)]), "--json"),
    }
    return {name: finish(process) for name, process in started.items()}


def test_table_has_a_row_per_host_and_job(runs):
    run = runs["table"]
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    names = ["HOST", "JOB", "LAST ARCHIVE", "AGE", "STATUS", "LAST ATTEMPT", "SIZE (ORIG / DEDUP)"]
    starts = [lines[0].index(name) for name in names]
    assert starts == sorted(starts) and lines[0].startswith("HOST  ")

    def cells(line):
        return [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]

    rows = {tuple(cells(line)[:2]): cells(line) for line in lines[1:8] if line.strip()}
    assert {key: row[4] for key, row in rows.items() if key[0] != "backup"} == EXPECTED
    assert rows["backup", "-"][2] == "(no jobs)"
    fresh = rows["host01", "rsystem"]
    assert fresh[2].startswith("host01-rsystem-") and fresh[3] in ("5m", "6m") and fresh[6] != "-"
    assert fresh[5] in ("4m", "5m", "6m")  # the attempt, 30 s after the archive's start
    assert rows["host04", "rvault"][5] in ("10m failed", "11m failed")
    assert rows["host03", "rapp"][3].startswith("2h") and rows["host03", "rapp"][5:] == ["-", "-"]
    assert rows["host01", "rextra"][2:4] == ["-", "-"] and rows["host01", "rextra"][5] == "-"
    attempts = next(line for line in lines if line.startswith("last attempt per host: "))
    assert re.search(r"host01 [456]m ago \(20\d\d-.*\), host02 .*, host03 never, host04 1[01]m ago", attempts), attempts
    assert rows["host04", "rvault"][2].startswith("host04-rvault-") and rows["host04", "rvault"][4] == "error"
    assert any(line.startswith("host04 rvault: wrong passphrase") for line in lines)
    assert lines[-1] == "6 hosts, 6 jobs: 2 fresh, 1 due, 1 stale, 1 missing, 1 error: NOT OK"


def test_exit_zero_only_when_every_job_is_fresh_or_of_a_tolerated_status(runs):
    run = runs["ok"]  # host01: fresh + missing, host02: due
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout)["ok"] is True
    strict = runs["strict"]  # the same fleet without --tolerate: a due and a missing job fail it
    assert strict.returncode == 1 and json.loads(strict.stdout)["ok"] is False, strict.stdout + strict.stderr


def test_a_fleet_with_no_job_or_with_data_the_deploys_refuse_fails_the_report(runs):
    """Once `0 jobs ... OK`, exit 0, for an inventory every deploy refused (`borgbackup` misspelt)."""
    none = runs["no jobs"]
    assert none.returncode == 1 and "no backup job in the inventory: nothing is backed up" in none.stdout, none.stdout
    assert none.stdout.splitlines()[-1].endswith(": NOT OK")
    invalid = runs["invalid"]
    assert invalid.returncode == 1, invalid.stdout + invalid.stderr
    assert "invalid host data" in invalid.stdout and "typo: borg_backup: " in invalid.stdout, invalid.stdout
    assert "did you mean borgbackup?" in invalid.stdout, invalid.stdout


def test_an_unreachable_host_is_listed_and_fails_the_report(runs):
    run = runs["ghost"]
    assert run.returncode == 1, run.stdout + run.stderr
    data = json.loads(run.stdout)["hosts"]
    assert data["host05"]["jobs"]["rvault"]["status"] == "fresh"
    assert data["ghost"]["reachable"] is False and "unable to connect" in data["ghost"]["error"].lower()
    table = render_table(json.loads(run.stdout)).splitlines()
    assert table[2].split()[:6] == ["ghost", "-", "-", "-", "unreachable", "-"]
    assert table[-1].endswith("; 1 hosts not read: NOT OK")


def test_formatting():
    assert [format_age(s) for s in (None, 5, 300, 3600 + 5 * 60, 86400 * 3 + 3600 * 4, -1)] == [
        "-", "5s", "5m", "1h05m", "3d04h", "in the future"]
    assert [format_bytes(b) for b in (None, 568, 1_234_567, 4 * 10**9)] == ["-", "568 B", "1.23 MB", "4.00 GB"]
