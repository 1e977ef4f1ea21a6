"""Overlapping runs on one fleet (issue 17): the per-host run lock and records that cannot be torn.

Three clients with tens of MB each, one repo server. The tests run in file order on one shared
setup; each asserts on the hosts and repos themselves (record files parsed as JSON, `borg check`
by the operator), not on our own facts alone.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import signal
import subprocess
import time

import pytest

from tests.fleet import Fleet
from tests.integration.helpers import DATA_SETUP, PROJECT, operator_borg

pytestmark = pytest.mark.fleet

CLIENTS = ["host01", "host02", "host03"]
JOBS = "/var/lib/pyinfra-backup/jobs/system"
LOCK = "/var/lib/pyinfra-backup/run.lock"


def job():
    return {
        "paths": ["/srv/data"],
        "repo": "borg@backup:.",
        "encryption": {"mode": "repokey-blake2", "passCommand": "cat /root/borg-pass"},
        "startAt": "daily",
        "prune": {"keep": {"within": "1d"}},  # the operator's prune and ledger run, nothing goes
        "checks": {"frequency": "30d"},
    }


@pytest.fixture(scope="module")
def setup(_fleet_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overlap")
    fleet = Fleet()
    try:
        fleet.up([*CLIENTS, "backup"])
        op_key = tmp / "operator_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(op_key)], check=True)
        passphrases = {name: "pp-" + secrets.token_hex(12) for name in CLIENTS}
        for name in CLIENTS:  # tens of MB each, incompressible: a create takes a while
            fleet.run(name, f"export PASS={passphrases[name]}\n" + DATA_SETUP + "head -c 40M /dev/urandom > /srv/data/big.bin\n")

        def inventory(path, lock_wait=60):
            data = {name: {"borgbackup": {"jobs": {"system": job()}, "operatorIdentity": str(op_key), "lockWait": lock_wait}}
                    for name in CLIENTS}
            data["backup"] = {"borgbackup": {"repos": {}, "operatorKeys": [op_key.with_suffix(".pub").read_text().strip()]}}
            groups = {"clients": CLIENTS, "servers": ["backup"], "east": CLIENTS[:1], "west": CLIENTS[1:]}
            return fleet.write_inventory(tmp / path, data, groups)

        state = {"fleet": fleet, "inventory": inventory("inventory.py"), "short": inventory("inventory-short.py", 2),
                 "op_key": op_key, "pass": passphrases, "tmp": tmp,
                 "env": {"BORG_BASE_DIR": str(tmp / "operator-borg")}}
        server = start(state, "deploys/backup_server.py").communicate()[0]
        first = start(state, "deploys/backup.py")
        state["first"] = (first.communicate()[0], first.returncode)
        assert first.returncode == 0, server + state["first"][0]
        yield state
    finally:
        fleet.down()


def start(setup, *args: str, inventory: str = "inventory") -> subprocess.Popen:
    """`pyinfra -y INVENTORY ARGS...` in the background (its own process group), output in `.communicate()[0]`."""
    import os

    env = {**os.environ, **setup["env"], "PYINFRA_BACKUP_STATE": setup["env"]["BORG_BASE_DIR"] + "-state",
           "PYINFRA_BACKUP_BORG_BASE_DIR": setup["env"]["BORG_BASE_DIR"]}
    return subprocess.Popen([str(PROJECT / ".venv/bin/pyinfra"), "-y", str(setup[inventory]), *args], cwd=PROJECT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: int = 300) -> tuple[str, int]:
    out = proc.communicate(timeout=timeout)[0]
    return out, proc.returncode


def archives(setup, client) -> list[str]:
    out = operator_borg(setup, client, "list", "--json", "--glob-archives", f"{client}-system-2*", "{repo}")
    return [a["name"] for a in json.loads(out.stdout)["archives"]]


def records_parse(setup) -> None:
    """Every client's create record is one JSON document, and its attempt record `<time> <status>`."""
    for client in CLIENTS:
        json.loads(setup["fleet"].run(client, f"cat {JOBS}/last-create.json").stdout)
        assert re.fullmatch(r"\d+ 0\n", setup["fleet"].run(client, f"cat {JOBS}/last-attempt").stdout)


def unchanged(setup) -> str:
    out, rc = finish(start(setup, "deploys/backup.py"))
    assert rc == 0 and "] Success" not in out and "No changes" in out, out
    return out


def test_two_forced_runs_at_once_both_end_cleanly_one_after_the_other(setup):
    before = {client: len(archives(setup, client)) for client in CLIENTS}
    first = start(setup, "deploys/backup.py", "--data", "backup_force=true")
    time.sleep(1.5)
    second = start(setup, "deploys/backup.py", "--data", "backup_force=true")
    (out1, rc1), (out2, rc2) = finish(first), finish(second)
    assert rc1 == 0, out1
    assert rc2 == 0, out2
    # the second run waited for the first on every client, said so, then made its own (forced) archive
    assert all(re.search(rf"\[{client}\].*waited \d+s for the run lock", out1 + out2) for client in CLIENTS), out2
    records_parse(setup)
    assert {client: len(archives(setup, client)) for client in CLIENTS} == {c: n + 2 for c, n in before.items()}
    unchanged(setup)
    for client in CLIENTS:
        check = operator_borg(setup, client, "check", "{repo}", check=False)
        assert check.returncode == 0, check.stderr


def test_a_second_run_that_cannot_wait_skips_the_host_with_the_holder_and_succeeds(setup):
    before = {client: len(archives(setup, client)) for client in CLIENTS}
    first = start(setup, "deploys/backup.py", "--data", "backup_force=true")
    time.sleep(1.5)
    second = start(setup, "deploys/backup.py", "--data", "backup_force=true", inventory="short")  # lockWait 2
    (out1, rc1), (out2, rc2) = finish(first), finish(second)
    assert rc1 == 0, out1
    assert rc2 == 0, out2
    held = r"another run holds this host since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\S+, pid \d+\)"
    assert all(re.search(rf"\[{client}\].*{held}", out2) for client in CLIENTS), out2
    assert {client: len(archives(setup, client)) for client in CLIENTS} == {c: n + 1 for c, n in before.items()}
    records_parse(setup)
    unchanged(setup)


def test_a_controller_killed_mid_run_leaves_no_lock_the_next_run_proceeds_at_once(setup):
    fleet = setup["fleet"]
    first = start(setup, "deploys/backup.py", "--data", "backup_force=true")
    deadline = time.time() + 60
    while time.time() < deadline:  # the lock is held and a borg create is running on host01
        if fleet.run("host01", "pgrep -f 'borg create' >/dev/null && ! flock -n " + LOCK + " true", check=False).returncode == 0:
            break
        time.sleep(0.2)
    else:
        pytest.fail(finish(first)[0])
    first.send_signal(signal.SIGKILL)
    first.wait()
    began = time.monotonic()
    out, rc = finish(start(setup, "deploys/backup.py", "--data", "backup_force=true"))
    assert rc == 0, out
    waited = [int(w) for w in re.findall(r"\[host0\d\].*waited (\d+)s for the run lock", out)]
    assert all(w <= 3 for w in waited), out  # the holder ends with the killed run's connection
    assert time.monotonic() - began < 120
    records_parse(setup)
    unchanged(setup)


def test_a_torn_record_makes_the_job_unknown_it_backs_up_and_the_next_run_changes_nothing(setup):
    fleet = setup["fleet"]
    before = len(archives(setup, "host01"))
    good = fleet.run("host01", f"cat {JOBS}/last-create.json").stdout
    # what a run killed while writing in place leaves: half a document and the start of another
    torn = shlex.quote(good[: len(good) // 2] + '{"archive"')
    fleet.run("host01", f"printf '%s' {torn} > {JOBS}/last-create.json")
    out, rc = finish(start(setup, "deploys/backup.py"))
    assert rc == 0, out
    assert "Traceback" not in out and re.search(r"\[host01\].*state unknown: .*last-create\.json", out), out
    assert len(archives(setup, "host01")) == before + 1
    records_parse(setup)
    unchanged(setup)


def test_two_controllers_on_disjoint_groups_at_once_never_conflict(setup):
    before = {client: len(archives(setup, client)) for client in CLIENTS}
    one = start(setup, "deploys/backup.py", "--data", "backup_force=true", "--limit", "east")
    two = start(setup, "deploys/backup.py", "--data", "backup_force=true", "--limit", "west")
    (out1, rc1), (out2, rc2) = finish(one), finish(two)
    assert rc1 == 0, out1
    assert rc2 == 0, out2
    assert "waited" not in out1 + out2  # per host: neither waits for the other
    assert "[host01]" in out1 and "[host02]" not in out1 and "[host02]" in out2 and "[host01]" not in out2
    assert {client: len(archives(setup, client)) for client in CLIENTS} == {c: n + 1 for c, n in before.items()}
    records_parse(setup)
    unchanged(setup)


def test_verify_takes_the_same_lock_and_skips_a_host_a_backup_holds(setup):
    backup = start(setup, "deploys/backup.py", "--data", "backup_force=true")
    time.sleep(1.5)
    verify = start(setup, "deploys/verify.py", inventory="short")  # lockWait 2
    (out1, rc1), (out2, rc2) = finish(backup), finish(verify)
    assert rc1 == 0, out1
    assert rc2 == 0, out2
    assert all(re.search(rf"\[{client}\].*skipped: another run holds this host since", out2) for client in CLIENTS), out2
    assert "Restore drill" not in out2
