"""The borg lifecycle on real fleet hosts: a repo server, four enrolled clients, the operator.

The tests run in file order on one shared setup (a fleet run costs seconds); each
asserts what it needs from the repos directly (borg on the operator side, files
inside the hosts), not from our own facts. Faults (a killed borg, a non-empty restore
target, an append-only delete, secret hygiene, ...) are in tests/faults.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import subprocess
import time

import pytest

from tests.fleet import BRIDGE_ADDRESS
from tests.integration.helpers import DATA_SETUP, PROJECT, PingServer, in_host, operator_borg, pyinfra, tree
from tests.integration.node_exporter import NodeExporter

pytestmark = pytest.mark.fleet

CLIENTS = ["host01", "host02", "host03", "host04"]
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


def job(**extra):
    return {
        "paths": ["/srv/data"],
        "repo": "borg@backup:.",
        "encryption": {"mode": "repokey-blake2", "passCommand": "cat /root/borg-pass"},
        "startAt": "daily",
        "prune": {"keep": {"daily": 1}},
        "checks": {"frequency": "30d"},
        **extra,
    }


@pytest.fixture(scope="module")
def setup(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("borg-fleet")
    op_key = tmp / "operator_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(op_key)], check=True)
    passphrases = {name: "pp-" + secrets.token_hex(12) for name in CLIENTS}
    for name in CLIENTS:
        fleet.run(name, f"export PASS={passphrases[name]}\n" + DATA_SETUP)
    pings = PingServer()

    def client_data(name):
        return {
            "borgbackup": {"jobs": {"system": job()}, "operatorIdentity": str(op_key), "lockWait": 3},
            "monitoring": {"textfile_dir": TEXTFILE_DIR, "ping_url": f"{pings.url}/ping/{name}"},
        }

    server = {"borgbackup": {"repos": {}, "operatorKeys": [op_key.with_suffix(".pub").read_text().strip()]}}
    host_data = {name: client_data(name) for name in CLIENTS}
    host_data["backup"] = server
    inventory = fleet.write_inventory(tmp / "inventory.py", host_data, {"clients": CLIENTS, "servers": ["backup"]})
    env = {"BORG_BASE_DIR": str(tmp / "operator-borg")}
    state = {"fleet": fleet, "inventory": inventory, "op_key": op_key, "pass": passphrases, "env": env, "tmp": tmp,
             "client_data": client_data, "server_data": server, "pings": pings}
    state["server_run"] = pyinfra(inventory, "deploys/backup_server.py", env=env)
    state["first_run"] = pyinfra(inventory, "deploys/backup.py", env=env)
    yield state
    pings.stop()


def archives(setup, client):
    out = operator_borg(setup, client, "list", "--json", "--glob-archives", f"{client}-system-2*", "{repo}")
    return [a["name"] for a in json.loads(out.stdout)["archives"]]


def test_first_run_enrolls_every_client_and_makes_one_archive_each(setup):
    assert setup["server_run"].returncode == 0, setup["server_run"].stdout
    assert setup["first_run"].returncode == 0, setup["first_run"].stdout
    for client in CLIENTS:
        names = archives(setup, client)
        assert len(names) == 1 and re.fullmatch(rf"{client}-system-\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d", names[0])
    keys = setup["fleet"].run("backup", "cat /var/lib/borgbackup/.ssh/authorized_keys").stdout.splitlines()
    client_lines = [line for line in keys if "pyinfra-backup@" in line]
    assert len(client_lines) == len(CLIENTS)
    assert all("--append-only" in line and line.endswith(f"pyinfra-backup@{line.split('@')[-1]}") for line in client_lines)
    mode = setup["fleet"].run("backup", "stat -c '%U %a' /var/lib/borgbackup/host01").stdout.split()
    assert mode == ["borg", "700"]
    pinned = setup["fleet"].run("host01", "cat /var/lib/pyinfra-backup/ssh/known_hosts").stdout
    assert setup["fleet"].host_key("backup") in pinned


def test_first_run_writes_metrics_node_exporter_serves_and_pings(setup):
    pings = [(path, body) for path, body in setup["pings"].requests if path.startswith("/ping/host01")]
    assert ("/ping/host01/start", "") in pings and ("/ping/host01", "") in pings
    with NodeExporter(TEXTFILE_DIR, fleet=setup["fleet"], host="host01") as exporter:
        labels = {"host": "host01", "borg_job": "system"}
        assert exporter.value("node_textfile_scrape_error") == 0
        assert exporter.value("borg_backup_last_attempt_success", **labels) == 1
        assert exporter.value("borg_backup_archives", **labels) == 1
        assert exporter.value("borg_backup_original_bytes", **labels) > 300000
        assert exporter.value("borg_backup_last_check_success", **labels) == 1
        assert abs(exporter.value("borg_backup_last_success_timestamp_seconds", **labels) - time.time()) < 600
        assert exporter.value("borg_backup_due_timestamp_seconds", **labels) > time.time()
        assert exporter.value("borg_backup_schedule_period_seconds", **labels) == 86400


def test_repo_server_follows_the_data_keys_removed_from_it_leave_the_file(setup):
    fleet = setup["fleet"]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "legacy@test", "-f", str(setup["tmp"] / "legacy")], check=True)
    legacy_key = (setup["tmp"] / "legacy.pub").read_text().strip()
    with_legacy = {"borgbackup": {**setup["server_data"]["borgbackup"],
                                  "repos": {"legacy": {"path": "/srv/legacy-repo", "authorizedKeys": [legacy_key], "quota": "5G"}}}}
    host_data = {name: setup["client_data"](name) for name in CLIENTS}
    inventory = fleet.write_inventory(setup["tmp"] / "inventory-legacy.py", {**host_data, "backup": with_legacy},
                                      {"clients": CLIENTS, "servers": ["backup"]})
    added = pyinfra(inventory, "deploys/backup_server.py", env=setup["env"])
    assert added.returncode == 0, added.stdout
    keys = fleet.run("backup", "cat /var/lib/borgbackup/.ssh/authorized_keys").stdout
    assert f'command="cd /srv/legacy-repo && borg serve --restrict-to-repository . --storage-quota 5G",restrict {legacy_key}' in keys
    assert fleet.run("backup", "stat -c '%U %a' /srv/legacy-repo").stdout.split() == ["borg", "700"]
    removed = pyinfra(setup["inventory"], "deploys/backup_server.py", env=setup["env"])
    assert removed.returncode == 0, removed.stdout
    assert legacy_key not in fleet.run("backup", "cat /var/lib/borgbackup/.ssh/authorized_keys").stdout
    again = pyinfra(setup["inventory"], "deploys/backup_server.py", env=setup["env"])
    assert again.returncode == 0 and "] Success" not in again.stdout and "No changes" in again.stdout


def test_a_typo_or_a_moved_job_revokes_no_key_without_revoke(setup):
    """One typo in the clients' shared repo once left the server with neither the clients' keys nor the operator's."""
    fleet = setup["fleet"]
    keys_file = "cat /var/lib/borgbackup/.ssh/authorized_keys"
    before = fleet.run("backup", keys_file).stdout
    groups = {"clients": CLIENTS, "servers": ["backup"]}

    def inventory(name, change):
        host_data = {client: setup["client_data"](client) for client in CLIENTS}
        change(host_data)
        return fleet.write_inventory(setup["tmp"] / name, {**host_data, "backup": setup["server_data"]}, groups)

    def typo(data):
        for client in CLIENTS:
            data[client]["borgbackup"]["jobs"]["system"]["repo"] = "borg@bakup:."
    refused = pyinfra(inventory("inventory-typo.py", typo), "deploys/backup_server.py", env=setup["env"])
    assert refused.returncode != 0
    assert "host01: borgbackup.jobs.system.repo: expected a host of the inventory or one outside it, got 'borg@bakup:.': " \
           "bakup is no host of the inventory, did you mean backup?" in refused.stdout
    assert fleet.run("backup", keys_file).stdout == before

    def moved(data):  # host03's job now goes to a local repo: host03 is still in the inventory
        data["host03"]["borgbackup"]["jobs"]["system"]["repo"] = "/var/backups/host03"
    moved_inventory = inventory("inventory-moved.py", moved)
    refused = pyinfra(moved_inventory, "deploys/backup_server.py", env=setup["env"])
    assert refused.returncode != 0 and "backup: nothing was changed: - borg: SHA256:" in refused.stdout
    assert "pyinfra-backup@host03 (repo /var/lib/borgbackup/host03) would be removed, but host03 is still in the " \
           "inventory" in refused.stdout and "--data revoke=host03" in refused.stdout
    assert fleet.run("backup", keys_file).stdout == before
    revoked = pyinfra(moved_inventory, "deploys/backup_server.py", "--data", "revoke=host03", env=setup["env"])
    assert revoked.returncode == 0, revoked.stdout
    assert "backup: authorized_keys - borg: SHA256:" in revoked.stdout and "pyinfra-backup@host03" in revoked.stdout
    assert "pyinfra-backup@host03" not in fleet.run("backup", keys_file).stdout

    without_operator = {"borgbackup": {"repos": {}}}
    no_operator = pyinfra(fleet.write_inventory(setup["tmp"] / "inventory-no-operator.py", {
        **{client: setup["client_data"](client) for client in CLIENTS}, "backup": without_operator}, groups),
        "deploys/backup_server.py", env=setup["env"])
    restored = pyinfra(setup["inventory"], "deploys/backup_server.py", env=setup["env"])  # host03 enrolled again
    assert restored.returncode == 0, restored.stdout
    assert "backup: authorized_keys + borg: SHA256:" in restored.stdout
    assert sorted(fleet.run("backup", keys_file).stdout.splitlines()) == sorted(before.splitlines())
    assert no_operator.returncode != 0 and "would keep no operator key" in no_operator.stdout, no_operator.stdout


def test_rerun_changes_nothing_in_one_remote_command_per_host(setup):
    fleet = setup["fleet"]
    before = {name: fleet.exec_count(name) for name in [*CLIENTS, "backup"]}
    run = pyinfra(setup["inventory"], "deploys/backup.py", "-v", env=setup["env"])
    after = {name: fleet.exec_count(name) for name in [*CLIENTS, "backup"]}
    assert run.returncode == 0, run.stdout
    assert "] Success" not in run.stdout and "No changes" in run.stdout
    for client in CLIENTS:
        assert after[client] - before[client] == 1, run.stdout  # the one fact: key, pinned keys, job records
        assert len(archives(setup, client)) == 1
    # the server: pyinfra's one fact; no client opened its repo (nothing was due)
    assert after["backup"] - before["backup"] == 1
    # ...read with the clients while the deploy was prepared: no operation waits for a read of its own
    server_read = run.stdout.index("[backup] Loaded fact facts.borg.BorgServer")
    assert server_read < run.stdout.index("--> Beginning operation run"), run.stdout
    assert re.search(r"\[host01\] .*system: not due: last archive host01-system-\S+ made \d+[smhd] ago", run.stdout), run.stdout


def test_a_forced_create_is_the_one_command_after_the_read_when_nothing_else_is_asked(setup):
    """No prune, checks or metrics: the run reads the host once (while it is prepared), runs create,
    and reads nothing again afterwards (the check step uses the records read at the start)."""
    fleet = setup["fleet"]
    data = {name: setup["client_data"](name) for name in CLIENTS}
    plain = {key: value for key, value in job().items() if key not in ("prune", "checks")}
    data["host03"] = {"borgbackup": {**data["host03"]["borgbackup"], "jobs": {"system": plain}}}
    inventory = fleet.write_inventory(setup["tmp"] / "inventory-plain.py", {**data, "backup": setup["server_data"]},
                                      {"clients": CLIENTS, "servers": ["backup"]})
    before, archives_before = fleet.exec_count("host03"), archives(setup, "host03")
    time.sleep(1)  # archive names have second resolution
    run = pyinfra(inventory, "deploys/backup.py", "--data", "backup_force=true", "--limit", "host03", "-v", env=setup["env"])
    assert run.returncode == 0, run.stdout
    assert fleet.exec_count("host03") - before == 2, run.stdout  # the fact, then create
    assert len(archives(setup, "host03")) == len(archives_before) + 1
    assert "system: no checks.frequency" in run.stdout


def test_forced_run_stores_a_changed_file_and_prunes_with_the_operator_key(setup):
    fleet = setup["fleet"]
    first = archives(setup, "host01")
    fleet.run("host01", "echo changed > /srv/data/hello.txt")
    time.sleep(1)  # archive names have second resolution
    run = pyinfra(setup["inventory"], "deploys/backup.py", "--data", "backup_force=true", "--limit", "host01", env=setup["env"])
    assert run.returncode == 0, run.stdout
    now = archives(setup, "host01")
    assert len(now) == 1 and now != first, run.stdout  # keep.daily=1: today's older archive was pruned
    content = operator_borg(setup, "host01", "extract", "--stdout", f"{{repo}}::{now[0]}", "srv/data/hello.txt")
    assert content.stdout == "changed\n"
    log = fleet.run("backup", f"grep -c 'Accepted publickey for borg from {BRIDGE_ADDRESS} ' /var/log/sshd.log").stdout
    assert int(log) >= 1  # the prune came from the operator's machine


def test_check_ran_once_and_is_remembered(setup):
    stamp = setup["fleet"].run("host02", "cat /var/lib/pyinfra-backup/jobs/system/last-check-ok").stdout.strip()
    assert abs(int(stamp) - time.time()) < 600


def test_restore_latest_reproduces_contents_owners_and_modes(setup):
    fleet = setup["fleet"]
    run = pyinfra(setup["inventory"], "tasks.borg.restore", "job=system", "target=/srv/restore", "--limit", "host02", env=setup["env"])
    assert run.returncode == 0, run.stdout
    original = tree(fleet, "host02", "/srv/data")
    restored = tree(fleet, "host02", "/srv/restore/srv/data")
    assert restored == original and "1234 2345 750 d" in restored
    again = pyinfra(setup["inventory"], "tasks.borg.restore", "job=system", "target=/srv/restore", "--limit", "host02", "-v",
                    env=setup["env"])
    assert again.returncode == 0 and "already restored" in again.stdout


def test_a_file_restored_in_place_and_broken_again_is_restored_again(setup):
    """docs/first-fleet.md's step 8, twice: the second restore once said "already restored" (the archive's
    mark was there) and left the file broken."""
    fleet = setup["fleet"]
    original = fleet.run("host02", "cat /srv/data/hello.txt").stdout
    restore = ("tasks.borg.restore", "job=system", "target=/", "paths=/srv/data/hello.txt", "overwrite=true",
               "--limit", "host02")
    for broken in ("oops", "oops again"):
        fleet.run("host02", f"echo {broken} > /srv/data/hello.txt")
        run = pyinfra(setup["inventory"], *restore, env=setup["env"])
        assert run.returncode == 0 and "[host02] Success" in run.stdout, run.stdout
        assert fleet.run("host02", "cat /srv/data/hello.txt").stdout == original
    fleet.run("host02", "rm /srv/data/hello.txt")  # gone is broken too
    gone = pyinfra(setup["inventory"], *restore, env=setup["env"])
    assert gone.returncode == 0 and fleet.run("host02", "cat /srv/data/hello.txt").stdout == original, gone.stdout
    again = pyinfra(setup["inventory"], *restore, "-v", env=setup["env"])
    assert again.returncode == 0 and "already restored" in again.stdout and "] Success" not in again.stdout, again.stdout
    fleet.run("host02", "echo oops > /srv/data/hello.txt")
    refused = pyinfra(setup["inventory"], *restore[:4], "--limit", "host02", env=setup["env"])  # no overwrite=true
    fleet.run("host02", f"printf %s {shlex.quote(original)} > /srv/data/hello.txt")
    assert refused.returncode != 0 and "changed since" in refused.stdout and "overwrite=True" in refused.stdout


def test_failures_stay_with_their_host_and_say_why(setup):
    fleet = setup["fleet"]
    server = fleet.host("backup").address
    fleet.run("host02", "cp /root/borg-pass /root/borg-pass.good && printf wrong > /root/borg-pass")
    fleet.run("host03", f"ip route add blackhole {server}/32")
    locker = subprocess.Popen(in_host(fleet, "backup", "runuser -u borg -- borg with-lock /var/lib/borgbackup/host04 sleep 60"))
    try:
        time.sleep(1.5)
        run = pyinfra(setup["inventory"], "deploys/backup.py", "--data", "backup_force=true", env=setup["env"])
        unreadable = pyinfra(setup["inventory"], "fact", "facts.borg.BackupFreshness", "--limit", "host02", yes=False)
    finally:
        locker.kill()
        locker.wait()
        fleet.run("backup", "pkill -f 'borg with-[l]ock' || true; sleep 0.5")
        fleet.run("host02", "mv /root/borg-pass.good /root/borg-pass")
        fleet.run("host03", f"ip route del blackhole {server}/32")
    assert run.returncode != 0
    out = run.stdout
    assert re.search(r"\[host02\].*wrong passphrase", out), out
    entry = json.loads(unreadable.stdout[unreadable.stdout.index("{"):unreadable.stdout.rindex("}") + 1])["host02"]["system"]
    assert entry["status"] == "error" and "wrong passphrase" in entry["error"], entry
    assert entry["last_archive"].startswith("host02-system-") and entry["age_seconds"] >= 0, entry  # the last known one
    assert re.search(r"\[host03\].*unreachable", out), out
    assert re.search(r"\[host04\].*locked by a live borg process", out), out
    assert len(archives(setup, "host01")) == 1  # host01 went on: a new archive, the older one pruned
    fails = [body for path, body in setup["pings"].requests if path == "/ping/host02/fail"]
    assert fails and "wrong passphrase" in fails[-1]
    with NodeExporter(TEXTFILE_DIR, fleet=fleet, host="host02") as exporter:
        assert exporter.value("borg_backup_last_attempt_success", host="host02", borg_job="system") == 0
    assert fleet.run("backup", "ls /var/lib/borgbackup/host04/ | grep -c lock || true").stdout.strip() == "0"


def test_a_new_host_is_enrolled_by_the_backup_run_alone(setup):
    fleet = setup["fleet"]
    setup["pass"]["host05"] = "pp-" + secrets.token_hex(12)
    fleet.run("host05", f"export PASS={setup['pass']['host05']}\n" + DATA_SETUP)
    inventory = setup["tmp"] / "inventory-with-host05.py"
    host_data = {name: setup["client_data"](name) for name in [*CLIENTS, "host05"]}
    host_data["backup"] = setup["server_data"]
    fleet.write_inventory(inventory, host_data, {"clients": [*CLIENTS, "host05"], "servers": ["backup"]})
    run = pyinfra(inventory, "deploys/backup.py", env=setup["env"])
    assert run.returncode == 0, run.stdout
    assert len(archives(setup, "host05")) == 1
    assert re.search(r"\[host01\] No changes", run.stdout)
    # The module's other tests leave host05 out of their data: it is revoked on purpose (it keeps its archives).
    revoked = pyinfra(setup["inventory"], "deploys/backup_server.py", "--data", "revoke=host05", env=setup["env"])
    assert revoked.returncode == 0 and "authorized_keys - borg: SHA256:" in revoked.stdout, revoked.stdout


def test_freshness_fact_reports_every_job(setup):
    run = pyinfra(setup["inventory"], "fact", "facts.borg.BackupFreshness", yes=False)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(run.stdout[run.stdout.index("{"):run.stdout.rindex("}") + 1])
    for client in CLIENTS:
        entry = data[client]["system"]
        assert entry["status"] == "fresh" and entry["due"] is False and entry["error"] is None
        assert entry["last_archive"].startswith(f"{client}-system-") and entry["age_seconds"] < 3600
    assert data["backup"] == {}


def test_deploys_facts_and_the_report_run_from_any_directory(setup, tmp_path):
    """Once `ModuleNotFoundError: No module named 'facts'` outside the project root."""
    backup = pyinfra(setup["inventory"], str(PROJECT / "deploys/backup.py"), env=setup["env"], cwd=tmp_path)
    assert backup.returncode == 0 and re.search(r"\[host01\] No changes", backup.stdout), backup.stdout
    fact = pyinfra(setup["inventory"], "fact", "facts.borg.BackupFreshness", "--limit", "host01", yes=False, cwd=tmp_path)
    assert fact.returncode == 0 and '"status": "fresh"' in fact.stdout, fact.stdout
    report = subprocess.run([str(PROJECT / ".venv/bin/python"), "-m", "pyinfra_backup.report", str(setup["inventory"])],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "No module named" not in report.stderr and "host01" in report.stdout, report.stdout + report.stderr


def test_one_failing_job_does_not_stop_the_hosts_other_jobs(setup):
    fleet = setup["fleet"]
    data = {name: setup["client_data"](name) for name in CLIENTS}
    broken = job(encryption={"mode": "repokey-blake2", "passCommand": "false"})  # sorts before "system": runs first
    data["host01"]["borgbackup"]["jobs"] = {"broken": broken, "system": job()}
    inventory = fleet.write_inventory(setup["tmp"] / "inventory-broken-job.py", {**data, "backup": setup["server_data"]},
                                      {"clients": CLIENTS, "servers": ["backup"]})
    before = archives(setup, "host01")
    run = pyinfra(inventory, "deploys/backup.py", "--data", "backup_force=system", env=setup["env"])
    assert run.returncode != 0 and re.search(r"\[host01\].*job broken", run.stdout), run.stdout
    after = archives(setup, "host01")
    assert after and after[-1] not in before  # the system job, after the broken one, still made its archive
    assert fleet.run("host01", "test -s /var/lib/pyinfra-backup/jobs/broken/last-attempt", check=False).returncode == 0


def test_a_wrong_operator_identity_says_which_key_which_host_refused_and_where_prune_runs(setup):
    fleet, tmp = setup["fleet"], setup["tmp"]
    wrong = tmp / "not_authorised_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    data = {name: setup["client_data"](name) for name in CLIENTS}
    data["host01"]["borgbackup"]["operatorIdentity"] = str(wrong)
    inventory = fleet.write_inventory(tmp / "inventory-wrong-operator-key.py", {**data, "backup": setup["server_data"]},
                                      {"clients": CLIENTS, "servers": ["backup"]})
    time.sleep(1)  # archive names have second resolution
    before = archives(setup, "host01")
    run = pyinfra(inventory, "deploys/backup.py", "--data", "backup_force=true", "--limit", "host01", env=setup["env"])
    assert run.returncode != 0, run.stdout
    server = fleet.host("backup").address
    # borg alone says "Connection closed by remote host"; ssh's own message names the user, host and refusal.
    # It is said up front, before any host changes, and again where the prune fails.
    said = (rf"host01: job system: prune of job system runs on this machine with {re.escape(str(wrong))} "
            rf"\(borgbackup.operatorIdentity\): ssh: borg@{re.escape(server)}: Permission denied \(publickey\); "
            r"the server must list its public key in borgbackup.operatorKeys")
    up_front, _, later = run.stdout.partition("--> Beginning operation run")
    assert re.search(said + r" \(its backup is still made; its prune fails\)", up_front), run.stdout
    assert re.search(r"\[host01\] " + said, later), run.stdout
    assert "backup key" not in run.stdout, run.stdout  # it is the operator's key, not the host's, that was refused
    assert len(archives(setup, "host01")) == len(before) + 1  # the host's own key still made its backup


def test_a_missing_operator_identity_is_refused_before_any_host_changes(setup):
    """Once a missing key file hid for days: it showed only when prune had something to delete, as borg's
    "Connection closed by remote host. Is borg working on the server?"."""
    fleet, tmp = setup["fleet"], setup["tmp"]
    missing = tmp / "no_such_ed25519"
    data = {name: setup["client_data"](name) for name in CLIENTS}
    data["host01"]["borgbackup"]["operatorIdentity"] = str(missing)
    inventory = fleet.write_inventory(tmp / "inventory-missing-operator-key.py", {**data, "backup": setup["server_data"]},
                                      {"clients": CLIENTS, "servers": ["backup"]})
    hosts = [*CLIENTS, "backup"]
    before = archives(setup, "host01")  # the operator's borg list: a command on the server, before the count
    commands = {name: fleet.exec_count(name) for name in hosts}
    run = pyinfra(inventory, "deploys/backup.py", "--data", "backup_force=true", env=setup["env"])
    assert run.returncode != 0, run.stdout
    assert (f"host01: borgbackup.operatorIdentity: prune of job system runs on this machine with {missing}: "
            "no such file (expected the operator's private key, its public key in backup's borgbackup.operatorKeys)"
            in run.stdout), run.stdout
    assert f"invalid host data in {inventory} (" in run.stdout and "pyinfra error in" not in run.stdout, run.stdout
    assert {name: fleet.exec_count(name) for name in hosts} == commands  # not one remote command
    assert archives(setup, "host01") == before
