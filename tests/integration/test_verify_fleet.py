"""deploys/verify.py on a fleet of its own: a repo server and two enrolled clients.

The tests run in file order on one setup (backup_server.py, then backup.py); each breaks one thing
on one host, checks that verify fails that host alone (naming the job and what failed) while the
other passes, then repairs it for the next test.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.fleet import Fleet
from tests.integration.helpers import borg_job, pyinfra

pytestmark = pytest.mark.fleet

CLIENTS = ["host01", "host02"]
SERVER = "backup"
DATA = r"""
set -e
mkdir -p /srv/data/app
echo "hello from $(hostname)" > /srv/data/hello.txt
head -c 200000 /dev/urandom > /srv/data/app/blob.bin
for i in 1 2 3 4 5; do head -c $((i * 3000)) /dev/urandom > /srv/data/app/part$i; done
umask 077 && printf '%s' "$PASS" > /root/borg-pass
"""
SEGMENT = "ls -S /var/lib/borgbackup/host02/data/*/* | head -n 1"  # the biggest segment: file data


def job(**extra) -> dict:
    return borg_job(SERVER, **extra)


@pytest.fixture(scope="module")
def setup(_fleet_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verify-fleet")
    fleet = Fleet()
    try:
        fleet.up([SERVER], group="servers")
        fleet.up(CLIENTS, group="clients")
        op_key = tmp / "operator_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(op_key)], check=True)
        for name in CLIENTS:
            fleet.run(name, f"export PASS=pp-{secrets.token_hex(12)}\n" + DATA)
        server = {"borgbackup": {"repos": {}, "operatorKeys": [op_key.with_suffix(".pub").read_text().strip()]}}

        def inventory(path: str, **jobs) -> str:
            data = {name: {"borgbackup": {"jobs": {"system": jobs.get(name, job())}, "operatorIdentity": str(op_key),
                                          "lockWait": 5}} for name in CLIENTS}
            data["host01"]["system_state"] = {"job": "system", "paths": ["/etc/machine-id", "/etc/ssh"]}
            return fleet.write_inventory(tmp / path, {**data, SERVER: server})

        state = {"fleet": fleet, "inventory": inventory("inventory.py"), "make_inventory": inventory,
                 "env": {"BORG_BASE_DIR": str(tmp / "operator-borg")}}
        for deploy in ("deploys/backup_server.py", "deploys/backup.py"):
            run = pyinfra(state["inventory"], deploy, env=state["env"])
            assert run.returncode == 0, run.stdout
        yield state
    finally:
        fleet.down()


def verify(setup, *args, inventory=None):
    started = time.monotonic()
    run = pyinfra(inventory or setup["inventory"], "deploys/verify.py", *args, env=setup["env"])
    run.seconds = time.monotonic() - started
    return run


def passed(run, host: str) -> bool:
    """The host's verify outcome reported no problem."""
    outcome = run.stdout[run.stdout.index("Starting operation: Verify outcome"):]
    return f"[{host}] No changes" in outcome and f"[{host}] {host}: verify failed" not in outcome


def test_a_healthy_fleet_passes_with_a_drill_of_every_file(setup):
    fleet = setup["fleet"]
    before = {host: fleet.exec_count(host) for host in [*CLIENTS, SERVER]}
    run = verify(setup)
    assert run.returncode == 0, run.stdout
    # one remote command each: the job records (check not due), the repo listing, each drill (host01: the
    # state archive's too); the server (no job) serves the borg sessions: the listing, 2 per drill
    assert [fleet.exec_count(host) - before[host] for host in [*CLIENTS, SERVER]] == [4, 3, 5 + 3], run.stdout
    state = re.search(r"\[host01\] job system state archive: drill of host01-system-state-\S+: (\d+) of (\d+) sampled "
                      r"files compared", run.stdout)
    assert state and state[1] == state[2] and int(state[1]) >= 3, run.stdout  # machine-id, ssh host keys, ...
    for host in CLIENTS:
        assert re.search(rf"\[{host}\] job system: drill of {host}-system-\S+: 7 of 7 sampled files compared", run.stdout)
        assert passed(run, host)
        leftovers = setup["fleet"].run(host, "ls -A /var/lib/pyinfra-backup/drill").stdout
        assert leftovers == ""  # the scratch directory went away
        record = setup["fleet"].run(host, "cat /var/lib/pyinfra-backup/jobs/system/last-drill").stdout.split("\n")
        assert record[0].endswith(" 0") and record[1].endswith(": 7 files compared")
    print(f"healthy verify run, 2 clients: {run.seconds:.1f} s")


def test_a_corrupt_segment_fails_its_host_until_a_check_passes(setup):
    fleet = setup["fleet"]
    segment = fleet.run(SERVER, SEGMENT).stdout.strip()
    fleet.run(SERVER, f"cp -a {segment} /root/segment.good && size=$(stat -c %s {segment}) && "
                      f"printf '\\377\\377\\377\\377\\377\\377\\377\\377' | "
                      f"dd of={segment} bs=1 seek=$((size / 2)) conv=notrunc status=none")
    forced = verify(setup, "--data", "backup_force_check=true")
    assert forced.returncode != 0
    assert re.search(r"\[host02\] host02: verify failed: .*job system: the repo is in error: the last borg check "
                     r"failed \(exit status 1, ", forced.stdout), forced.stdout
    assert "Data integrity error: Segment entry checksum mismatch" in forced.stdout  # borg's own words
    assert passed(forced, "host01"), forced.stdout
    again = verify(setup, "--limit", "host02")  # not forced: the failed check runs again, and fails again
    assert again.returncode != 0 and not passed(again, "host02"), again.stdout
    fleet.run(SERVER, f"cp -a /root/segment.good {segment}")


def test_a_drill_mismatch_names_the_file_a_changed_file_is_only_skipped(setup):
    fleet = setup["fleet"]
    fleet.run("host01", "cd /srv/data && cp -a app/blob.bin /root/blob.good && "
                        "printf 'rot' | dd of=app/blob.bin bs=1 seek=1000 conv=notrunc status=none && "
                        "touch -r /root/blob.good app/blob.bin && echo edited >> hello.txt")
    run = verify(setup)
    fleet.run("host01", "cp -a /root/blob.good /srv/data/app/blob.bin")
    assert run.returncode != 0
    assert re.search(r"\[host01\] host01: verify failed: job system: drill of host01-system-\S+: 6 of 7 sampled files "
                     r"compared .*; 1 differ from the archive although size and mtime match: /srv/data/app/blob.bin; "
                     r"1 skipped, changed since the archive: /srv/data/hello.txt", run.stdout), run.stdout
    assert passed(run, "host02"), run.stdout  # its check ran again after the repair, and passed
    assert fleet.run("host02", "cat /var/lib/pyinfra-backup/jobs/system/last-check").stdout.split()[1] == "0"


def test_a_stale_job_fails_a_due_one_passes_with_a_warning(setup):
    fleet = setup["fleet"]
    record = fleet.run("host01", "cat /var/lib/pyinfra-backup/jobs/system/last-create.json").stdout
    made = datetime.fromisoformat(json.loads(record)["archive"]["start"]).replace(tzinfo=UTC)
    # host01: daily events just after and a minute before its archive: due, not stale
    due = [f"*-*-* {made + timedelta(seconds=1):%H:%M:%S}", f"*-*-* {made - timedelta(minutes=1):%H:%M:%S}"]
    inventory = setup["make_inventory"]("inventory-stale.py", host01=job(startAt=due),
                                        host02=job(startAt="*-*-* *:*:00/5"))  # every 5 s: stale after 10 s
    time.sleep(max(0.0, 11 - (datetime.now(UTC) - made).total_seconds()))
    run = verify(setup, inventory=inventory)
    assert run.returncode != 0
    assert re.search(r"\[host02\] host02: verify failed: job system: stale: last archive host02-system-\S+ made \S+ ago",
                     run.stdout), run.stdout
    assert re.search(r"\[host01\] warning: job system: due: last archive host01-system-\S+", run.stdout), run.stdout
    assert passed(run, "host01"), run.stdout
