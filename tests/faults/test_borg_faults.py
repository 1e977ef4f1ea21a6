"""Faults of a backup run on real fleet hosts (issue 8, scenarios 1-5, 9-14; issue 15, scenarios 15-17), in
file order on one setup.

Each scenario breaks something real (a link, a borg process, a filesystem, a segment, a host key, the
operator's shell, the operator's connection to the repo server, a restore's stream),
runs what a user runs, asserts what the user sees, repairs, and ends with `Ledger.assert_kept`:
`borg check` clean on every repo involved, no archive, file or secret lost, no lock left.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pyinfra_backup.borg import OPERATOR_BASE_DIR_VAR, borg_env, create_argv
from pyinfra_backup.enrollment import Server, plan_jobs
from pyinfra_backup.shell import with_env
from tests.faults.conftest import CLIENTS, SERVER, _each, job, wait_for
from tests.integration.helpers import PROJECT, in_host, tree

pytestmark = pytest.mark.fleet

CLIENT_RSH = ("ssh -i /var/lib/pyinfra-backup/ssh/id_ed25519 -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes "
              "-o UserKnownHostsFile=/var/lib/pyinfra-backup/ssh/known_hosts")


def host_lines(run, name: str) -> str:
    return "\n".join(line for line in run.stdout.splitlines() if f"[{name}]" in line)


def sshd_log_size(faults) -> int:
    return int(faults.fleet.run(SERVER, "stat -c %s /var/log/sshd.log").stdout)


def sshd_log_since(faults, offset: int) -> str:
    return faults.fleet.run(SERVER, f"tail -c +{offset + 1} /var/log/sshd.log").stdout


# --- 1 + 4: a host unreachable at the start, a wrong passphrase, a failing passCommand, in one run -------


@pytest.fixture(scope="module")
def failing_run(faults):
    """One forced run where host05's link is down, host03's passphrase is wrong and host04's passCommand
    fails; host01 and host02 are fine."""
    fleet = faults.fleet
    kept = {name: faults.ledger(name) for name in CLIENTS}
    keys_before = fleet.run(SERVER, "cat /var/lib/borgbackup/.ssh/authorized_keys").stdout
    broken = {**faults.jobs["host04"]["system"], "encryption": {"mode": "repokey-blake2", "passCommand": "cat /run/secrets/borg-pass"}}
    inventory = faults.write_inventory("inventory-failing.py", host04=faults.client_data("host04", {"system": broken}))
    config = faults.tmp / "config.py"
    config.write_text("CONNECT_TIMEOUT = 3\n")  # pyinfra's default waits 10 s for a host that is down
    fleet.run("host05", "ip link set pbk-eth0 down")
    fleet.run("host03", "cp /root/borg-pass /root/borg-pass.good && printf wrong > /root/borg-pass")
    try:
        run = faults.backup("--config", str(config), "--data", "backup_force=true", inventory=inventory)
    finally:
        fleet.run("host05", "ip link set pbk-eth0 up")
        fleet.run("host03", "mv /root/borg-pass.good /root/borg-pass")
    return {"run": run, "kept": kept, "keys_before": keys_before}


def test_1_a_host_unreachable_at_the_start_fails_alone_and_is_named(faults, failing_run):
    run, kept = failing_run["run"], failing_run["kept"]
    assert run.returncode != 0
    assert re.search(r"\[host05\] Could not connect", run.stdout), run.stdout
    assert re.search(r"--> Results:(.|\n)*--> Not reached, nothing ran on them .*: host05$", run.stdout, re.M), run.stdout
    assert "pyinfra error in" not in run.stdout, run.stdout  # no crash: the run went on without host05
    for name in ("host01", "host02"):  # the others finished: a new archive each
        assert len(faults.archives(name)) == len(kept[name].archives[name]) + 1, host_lines(run, name)
    # host05's access to its repo was kept while it was down (its key could not be read)
    assert faults.fleet.run(SERVER, "cat /var/lib/borgbackup/.ssh/authorized_keys").stdout == failing_run["keys_before"]
    back = faults.backup("--limit", "host05", "--data", "backup_force=true")
    assert back.returncode == 0, back.stdout
    assert len(faults.archives("host05")) == len(kept["host05"].archives["host05"]) + 1
    for name in ("host01", "host02", "host05"):
        kept[name].assert_kept()


def test_4_a_wrong_passphrase_and_a_failing_pass_command_fail_their_host_and_say_why(faults, failing_run):
    run, kept = failing_run["run"], failing_run["kept"]
    assert re.search(r"\[host03\] host03: job system: wrong passphrase", run.stdout), run.stdout
    assert re.search(r"\[host04\] host04: job system: the passCommand failed", run.stdout), run.stdout
    for name in ("host03", "host04"):
        assert faults.archives(name) == kept[name].archives[name]  # nothing was written
        kept[name].assert_kept()
    again = faults.backup("--limit", "host03", "--data", "backup_force=true")  # the right passphrase again
    assert again.returncode == 0, again.stdout


# --- 2: borg killed mid-create ------------------------------------------------------------------------


def test_2_borg_killed_mid_create_next_run_completes_lock_recovered_checkpoint_not_fresh(faults):
    fleet, repo = faults.fleet, faults.repo_dir("host01")
    kept = faults.ledger("host01")
    # A second job (no check), its first create throttled to be killed mid-way: 2 MB at 250 kB/s, a checkpoint
    # every second.
    fleet.run("host01", "mkdir -p /srv/bulk && for i in $(seq 20); do head -c 100000 /dev/urandom > /srv/bulk/f$i; done")
    bulk = job(paths=["/srv/bulk"])
    del bulk["checks"]
    throttled = {**bulk, "extraCreateArgs": ["--checkpoint-interval", "1", "--upload-ratelimit", "250"]}
    inventory = faults.write_inventory("inventory-bulk.py", host01=faults.client_data("host01", {**faults.jobs["host01"], "bulk": bulk}))
    slow = faults.write_inventory("inventory-bulk-slow.py", host01=faults.client_data("host01", {**faults.jobs["host01"], "bulk": throttled}))
    commits = int(fleet.run(SERVER, f"wc -l < {repo}/transactions").stdout)
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("run", faults.backup("--limit", "host01", inventory=slow)))
    runner.start()
    try:
        # the first checkpoint is committed: kill the repo's `borg serve` on the server, as an OOM kill would
        def committed():
            assert runner.is_alive(), result["run"].stdout
            return int(fleet.run(SERVER, f"wc -l < {repo}/transactions").stdout) > commits

        wait_for(committed, 60, "a checkpoint")
        # borg itself (not the forced command's `sh -c`: its death would let borg serve exit cleanly on EOF)
        killed = fleet.run(SERVER, f"for p in $(pgrep -x borg); do [ \"$(readlink /proc/$p/cwd)\" = {repo} ] && "
                                   "kill -9 $p && echo $p; done; true").stdout.split()
    finally:
        runner.join()
    run = result["run"]
    assert len(killed) == 1, run.stdout
    assert [f for f in faults.repo_files("host01") if "lock" in f], "the killed borg left its lock"  # (the next borg clears it)
    assert run.returncode != 0
    lost = r"the repo server is unreachable \(.*Connection closed|the connection to the repo server was lost"
    assert re.search(rf"\[host01\] host01: job bulk: ({lost})", run.stdout), run.stdout
    names = faults.archives("host01", checkpoints=True)
    assert any(re.fullmatch(r"host01-bulk-\S+\.checkpoint", name) for name in names), names
    assert not any(re.fullmatch(r"host01-bulk-[0-9T:-]+", name) for name in names), names
    fresh = faults.freshness(inventory)["host01"]
    assert fresh["bulk"]["status"] == "missing" and fresh["bulk"]["last_archive"] is None, fresh  # a checkpoint is not a backup
    assert fresh["system"]["status"] == "fresh"

    started = time.monotonic()
    again = faults.backup("--limit", "host01", inventory=inventory)  # not forced: bulk is still due (unthrottled now)
    assert again.returncode == 0, again.stdout
    assert time.monotonic() - started < 30  # borg removed the dead holder's lock, did not wait for it
    fresh = faults.freshness(inventory)["host01"]
    assert fresh["bulk"]["status"] == "fresh" and not fresh["bulk"]["last_archive"].endswith("checkpoint"), fresh
    kept.assert_kept()


# --- 3: the backup server's filesystem full -----------------------------------------------------------


def test_3_server_filesystem_full_clear_error_repo_consistent_next_run_succeeds(faults):
    fleet, repo = faults.fleet, faults.repo_dir("host02")
    kept = faults.ledger("host02")
    # The repo moves onto a 20 MB tmpfs inside the server (its own mount namespace), then 30 MB are due.
    fleet.run(SERVER, f"cp -a {repo} /root/host02.repo && mount -t tmpfs -o size=20m,mode=0700 pbk-full {repo} && "
                      f"cp -a /root/host02.repo/. {repo}/ && chown borg:borg {repo} && rm -rf /root/host02.repo")
    try:
        fleet.run("host02", "mkdir -p /srv/data/bulk && head -c 30000000 /dev/urandom > /srv/data/bulk/big.bin")
        full = faults.backup("--limit", "host02", "--data", "backup_force=true")
        assert full.returncode != 0
        assert "[host02] host02: job system: the repo server's filesystem is full (" in full.stdout, full.stdout
        assert "100%" in fleet.run(SERVER, f"df {repo}").stdout  # it was really full

        fleet.run(SERVER, f"mount -o remount,size=200m {repo}")  # space freed
        assert faults.borg("host02", "check", "{repo}", check=False).returncode == 0  # the repo as the failure left it
        assert faults.archives("host02", checkpoints=True) == kept.archives["host02"]  # no partial archive
        after = faults.backup("--limit", "host02", "--data", "backup_force=true")
        assert after.returncode == 0, after.stdout
        assert len(faults.archives("host02")) == len(kept.archives["host02"]) + 1
    finally:  # back onto the server's disk, byte for byte
        fleet.run(SERVER, f"cp -a {repo}/. /root/host02.repo && umount {repo} && find {repo} -mindepth 1 -delete && "
                          f"cp -a /root/host02.repo/. {repo}/ && rm -rf /root/host02.repo", check=False)
        fleet.run("host02", "rm -rf /srv/data/bulk")
    assert "pbk-full" not in fleet.run(SERVER, "cat /proc/mounts").stdout
    kept.assert_kept()


# --- 5: a corrupted segment ---------------------------------------------------------------------------


def report(faults, inventory) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyinfra_backup.report", str(inventory), "--json"], cwd=PROJECT,
                          capture_output=True, text=True, timeout=120)


def test_5_corrupted_segment_found_by_check_reported_never_fresh(faults):
    fleet = faults.fleet
    kept = faults.ledger("host03")
    data = f"{faults.repo_dir('host03')}/data/0"
    segment = fleet.run(SERVER, f"cd {data} && ls -S | head -1").stdout.strip()  # the one holding the files' chunks
    fleet.run(SERVER, f"cp -a {data}/{segment} /root/segment.good && "
                      f"printf XXXXXXXX | dd of={data}/{segment} bs=1 seek=5000 conv=notrunc status=none")
    try:
        checked = faults.backup("--limit", "host03", "--data", "backup_force_check=true")
        assert checked.returncode != 0
        assert "[host03] host03: job system: borg check failed (exit status 1)" in checked.stdout, checked.stdout
        # What check found is borg serve's to say: the client relays its "Remote: ..." lines only when it reads
        # ssh's stderr before the last reply (under load it does not, seen in a fresh-root CI run). The server's
        # own repository check says it every time.
        found = fleet.run(SERVER, f"runuser -u borg -- borg check --repository-only {faults.repo_dir('host03')}", check=False)
        assert found.returncode == 1 and "Segment entry checksum mismatch" in found.stderr, found.stderr
        entry = faults.freshness()["host03"]["system"]
        assert entry["status"] == "error" and "the last borg check failed" in entry["error"], entry
        shown = report(faults, faults.inventory)
        assert shown.returncode == 1, shown.stdout + shown.stderr
        assert json.loads(shown.stdout)["hosts"]["host03"]["jobs"]["system"]["status"] == "error"
        # Until a check passes, every run checks again (the repo is damaged) and fails the host.
        again = faults.backup("--limit", "host03")
        assert again.returncode != 0 and "borg check failed" in again.stdout, again.stdout
    finally:
        fleet.run(SERVER, f"cp -a /root/segment.good {data}/{segment} && rm /root/segment.good")
    repaired = faults.backup("--limit", "host03")  # the check passes again: the host is fine
    assert repaired.returncode == 0, repaired.stdout
    kept.assert_kept()


# --- 9: restore onto a non-empty target ---------------------------------------------------------------


def test_9_restore_refuses_a_non_empty_target_unless_told_to_overwrite(faults):
    fleet = faults.fleet
    kept = faults.ledger("host04")
    fleet.run("host04", "rm -rf /srv/busy && mkdir -p /srv/busy/srv/data && echo mine > /srv/busy/keep.txt && "
                        "echo theirs > /srv/busy/srv/data/hello.txt")
    refused = faults.pyinfra("tasks.borg.restore", "job=system", "target=/srv/busy", "--limit", "host04")
    assert refused.returncode != 0 and "not empty" in refused.stdout and "overwrite" in refused.stdout, refused.stdout
    assert fleet.run("host04", "cat /srv/busy/srv/data/hello.txt").stdout == "theirs\n"  # untouched
    forced = faults.pyinfra("tasks.borg.restore", "job=system", "target=/srv/busy", "overwrite=true", "--limit", "host04")
    assert forced.returncode == 0, forced.stdout
    assert fleet.run("host04", "cat /srv/busy/srv/data/hello.txt").stdout == "hello from host04\n"
    assert fleet.run("host04", "cat /srv/busy/keep.txt").stdout == "mine\n"  # replaced files only, nothing else
    kept.assert_kept()


# --- 10: an append-only key deletes and prunes; the rollback brings every archive back ----------------


@pytest.fixture(scope="module")
def deleted(faults):
    """host05's client key deletes one archive and prunes all but the last; `before` is a UTC time
    just before that (the rollback point is the transaction committed before it)."""
    fleet = faults.fleet
    if len(faults.archives("host05")) < 2:  # (scenario 1 made a second one)
        assert faults.backup("--limit", "host05", "--data", "backup_force=true").returncode == 0
    names = faults.archives("host05")
    kept = faults.ledger("host05")
    before = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
    time.sleep(0.2)
    client_borg = f"BORG_PASSCOMMAND='cat /root/borg-pass' BORG_RSH='{CLIENT_RSH}' borg"
    repo = f"borg@{fleet.host(SERVER).address}:."
    fleet.run("host05", f"{client_borg} delete {repo}::{names[0]} && {client_borg} prune --keep-last 1 {repo}")
    assert faults.archives("host05") == names[-1:]  # borg appears to obey the client's append-only key...
    return {"names": names, "kept": kept, "before": before}


def repo_digest(faults, client: str) -> str:
    """Every file of the client's repo but borg's lock, with its SHA-256: what a failed rollback must leave."""
    return faults.fleet.run(SERVER, f"cd {faults.repo_dir(client)} && find . -type f ! -name 'lock*' -print0 | "
                                    "sort -z | xargs -0 sha256sum").stdout


def test_10a_a_rollback_time_that_is_not_iso_utc_is_refused_and_nothing_changes(faults, deleted):
    files = repo_digest(faults, "host05")
    for before in ("yesterday", "2026-11-27T13:00:00+01:00"):
        run = faults.pyinfra("tasks.borg.rollback", "repo=host05", f"before={before}", "--limit", SERVER)
        assert run.returncode != 0, run.stdout
        assert re.search(r"rollback of host05: before=.*(not an ISO-8601 time|in UTC).*nothing was changed", run.stdout), run.stdout
    assert repo_digest(faults, "host05") == files


def test_10b_a_rollback_waits_for_a_live_borg_s_lock_and_moves_nothing_without_it(faults, deleted):
    fleet, repo = faults.fleet, faults.repo_dir("host05")
    holder = subprocess.Popen(in_host(fleet, SERVER, f"exec runuser -u borg -- borg with-lock {repo} sleep 15"))
    try:
        wait_for(lambda: "./lock.roster" in faults.repo_files("host05"), 10, "borg's lock")
        files = repo_digest(faults, "host05")  # (with-lock itself writes a segment when it starts)
        run = faults.pyinfra("tasks.borg.rollback", "repo=host05", f"before={deleted['before']}", "lock_wait=2",
                             "--limit", SERVER)
        during = repo_digest(faults, "host05")
    finally:
        holder.wait(timeout=60)
    assert run.returncode != 0, run.stdout
    assert "rollback: borg's lock on /var/lib/borgbackup/host05 was not acquired within 2 s" in run.stdout, run.stdout
    assert "nothing was moved" in run.stdout and during == files
    assert fleet.run(SERVER, f"ls -A {repo}.rolled-back 2>/dev/null").stdout == ""  # no file went anywhere


def test_10c_when_the_check_after_the_move_fails_every_file_goes_back(faults, deleted):
    fleet, repo = faults.fleet, faults.repo_dir("host05")
    log = fleet.run(SERVER, f"cat {repo}/transactions").stdout.splitlines()
    point = [int(line.split()[1].rstrip(",")) for line in log if line.split()[-1] < deleted["before"]][-1]
    # A segment the rollback keeps, damaged (8 bytes in its middle): the check after the move must fail.
    segment = fleet.run(SERVER, f"cd {repo}/data/0 && ls -S | awk '$1 <= {point}' | head -1").stdout.strip()
    size = int(fleet.run(SERVER, f"stat -c %s {repo}/data/0/{segment}").stdout)
    spot = f"of={repo}/data/0/{segment} bs=1 seek={size // 2} count=8 conv=notrunc status=none"
    original = fleet.run(SERVER, f"dd if={repo}/data/0/{segment} bs=1 skip={size // 2} count=8 status=none | base64").stdout
    fleet.run(SERVER, f"printf XXXXXXXX | dd {spot}")
    try:
        files = repo_digest(faults, "host05")
        run = faults.pyinfra("tasks.borg.rollback", "repo=host05", f"before={deleted['before']}", "--limit", SERVER)
        after = repo_digest(faults, "host05")
    finally:
        fleet.run(SERVER, f"printf %s {original.strip()} | base64 -d | dd {spot}")
    assert run.returncode != 0, run.stdout
    assert "borg check --repository-only failed after the move: putting the" in run.stdout, run.stdout
    assert "every moved file is back in place; the repo is as it was before the rollback" in run.stdout, run.stdout
    assert after == files  # every segment and index file back, nothing else written
    assert fleet.run(SERVER, f"ls -A {repo}.rolled-back 2>/dev/null").stdout == ""


def test_10_append_only_delete_and_prune_are_rolled_back_every_archive_extractable(faults, deleted):
    fleet, names, kept = faults.fleet, deleted["names"], deleted["kept"]
    moved = set(faults.repo_files("host05"))
    run = faults.pyinfra("tasks.borg.rollback", "repo=host05", f"before={deleted['before']}", "--limit", SERVER)
    assert run.returncode == 0, run.stdout
    assert "borg check --repository-only passed" in run.stdout, run.stdout
    moved -= set(faults.repo_files("host05"))
    quarantined = fleet.run(SERVER, f"cd {faults.repo_dir('host05')}.rolled-back && find . -type f").stdout.split()
    assert moved and {name.rsplit("/", 1)[1] for name in moved} <= {name.rsplit("/", 1)[1] for name in quarantined}
    again = faults.pyinfra("tasks.borg.rollback", "repo=host05", f"before={deleted['before']}", "--limit", SERVER)
    assert again.returncode == 0 and "[backup] No changes" in again.stdout, again.stdout  # rolled back already
    repo_id = fleet.run(SERVER, f"sed -n 's/^id = //p' {faults.repo_dir('host05')}/config").stdout.strip()
    base = faults.env["BORG_BASE_DIR"]
    subprocess.run(["rm", "-rf", f"{base}/.config/borg/security/{repo_id}", f"{base}/.cache/borg/{repo_id}"], check=True)
    assert faults.archives("host05") == names  # ...but the rollback brings every archive back
    for name in names:
        data = faults.borg("host05", "extract", "--stdout", f"{{repo}}::{name}", "srv/data/hello.txt")
        assert data.stdout == "hello from host05\n"
    forget = faults.pyinfra("tasks.borg.forget_repo_state", "job=system", "--limit", "host05")
    assert forget.returncode == 0, forget.stdout
    again = faults.backup("--limit", "host05", "--data", "backup_force=true")
    assert again.returncode == 0, again.stdout
    kept.assert_kept()


# --- 12: the backup server's host key changed ---------------------------------------------------------


def served_key(faults) -> str:
    scan = subprocess.run(["ssh-keyscan", "-t", "ed25519", faults.fleet.host(SERVER).address], capture_output=True, text=True)
    return scan.stdout.split()[-1] if scan.stdout.strip() else ""


def test_12_a_changed_server_host_key_is_refused_by_every_client_and_nothing_is_sent(faults):
    fleet = faults.fleet
    kept = {name: faults.ledger(name) for name in CLIENTS}
    files = {name: faults.repo_files(name) for name in CLIENTS}

    # (a) A man in the middle for the clients only: their packets for the server's address go to an impostor
    # (a host of its own holding that address, with its own host key); the operator still reaches the server.
    server, mitm = fleet.host(SERVER).address, fleet.add("mitm").address
    try:
        fleet.run("mitm", f"ip addr add {server}/32 dev lo && /usr/sbin/sshd -f /etc/ssh/sshd_config "
                          f"-o ListenAddress={server} -o PidFile=/run/mitm.pid -E /var/log/mitm.log")
        for name in CLIENTS:
            fleet.run(name, f"ip route add {server}/32 via {mitm} dev pbk-eth0")
        intercepted = faults.backup("--data", "backup_force=true")
        impostor_log = fleet.run("mitm", "cat /var/log/mitm.log").stdout
    finally:
        for name in CLIENTS:
            fleet.run(name, f"ip route del {server}/32", check=False)
        fleet.remove("mitm")
    assert intercepted.returncode != 0
    # borg relays ssh's "Host key verification failed" only when it reads ssh's stderr before it sees the
    # connection closed (a race inside borg): the reason is either.
    refused = r"the server's SSH host key does not match the pinned one|the repo server is unreachable \(Connection closed"
    for name in CLIENTS:
        assert re.search(rf"\[{name}\] {name}: job system: ({refused})", intercepted.stdout), host_lines(intercepted, name)
        assert f"Connection from {fleet.host(name).address} " in impostor_log  # each client did reach the impostor...
    assert "userauth-request" not in impostor_log and "Accepted" not in impostor_log, impostor_log  # ...and sent no key

    # (b) The server's own host key replaced: SIGHUP makes its sshd (PID 1 of its PID namespace) re-exec with it.
    old_key = served_key(faults)
    fleet.run(SERVER, "cd /etc/ssh && mv ssh_host_ed25519_key /root/hostkey && mv ssh_host_ed25519_key.pub /root/hostkey.pub && "
                      "ssh-keygen -q -t ed25519 -N '' -f ssh_host_ed25519_key && kill -HUP 1")
    try:
        wait_for(lambda: served_key(faults) not in ("", old_key), 10, "sshd with the new key")
        offset = sshd_log_size(faults)
        run = faults.backup("--data", "backup_force=true")
        # The client's own borg, as its timer would run it: the job's environment (pinned key, strict checking).
        planned = plan_jobs("host01", faults.client_data("host01"),
                            {SERVER: Server.from_data(SERVER, {**fleet.connection_data(SERVER), **faults.server_data})})[0]
        create = create_argv(planned.job, "host01-system", planned.location.url)
        env = borg_env(planned.job, planned.location)
        direct = fleet.run("host01", with_env(env, create), check=False)
        ssh = fleet.run("host01", f"{env['BORG_RSH']} {planned.location.url.removesuffix(':.')} true </dev/null", check=False)
        log = sshd_log_since(faults, offset)
    finally:
        fleet.run(SERVER, "cd /etc/ssh && mv /root/hostkey ssh_host_ed25519_key && mv /root/hostkey.pub ssh_host_ed25519_key.pub && "
                          "kill -HUP 1")
        wait_for(lambda: served_key(faults) == old_key, 10, "the old host key back")
    assert run.returncode != 0
    assert "[backup] SSH host key error" in run.stdout, run.stdout  # the operator refuses the server...
    for name in CLIENTS:  # ...so no client pins the new key or runs borg
        assert re.search(rf"\[{name}\] {name}: backup is unreachable", run.stdout), run.stdout
    # borg fails; its message has ssh's reason when borg read it in time (the race of (a)); its ssh command says it
    assert direct.returncode == 2 and re.search("Host key verification failed|Connection closed by remote host", direct.stderr)
    assert ssh.returncode == 255 and "Host key verification failed" in ssh.stderr, ssh.stderr
    assert "userauth-request" not in log and "Accepted" not in log, log  # no key offered, nothing sent

    for name in CLIENTS:
        assert faults.repo_files(name) == files[name]  # not one segment written
        kept[name].assert_kept()


# --- 13: a network cut in the middle of a create --------------------------------------------------------


def server_with(faults, **borgbackup) -> dict:
    return {"borgbackup": {**faults.server_data["borgbackup"], **borgbackup}}


def test_13a_the_repo_server_gets_an_sshd_drop_in_checked_by_sshd_t_before_sshd_reloads(faults):
    fleet = faults.fleet
    dropin = "/etc/ssh/sshd_config.d/pyinfra-backup-borg.conf"
    # Another drop-in that sshd refuses: ours is checked with the whole configuration, and left as it was.
    fleet.run(SERVER, "echo 'NoSuchOption yes' > /etc/ssh/sshd_config.d/zz-broken.conf")
    inventory = faults.write_inventory("inventory-alive.py", **{SERVER: server_with(faults, clientAliveInterval=1)})
    try:
        refused = faults.pyinfra("deploys/backup_server.py", inventory=inventory)
    finally:
        fleet.run(SERVER, "rm -f /etc/ssh/sshd_config.d/zz-broken.conf")
    assert refused.returncode != 0, refused.stdout
    assert re.search(rf"sshd: the drop-in {dropin} fails sshd -t \(left as it was\): .*NoSuchOption", refused.stdout), refused.stdout
    # the one the first backup_server.py run wrote (defaults; sshd not reloaded: its config did not include it then)
    assert "    ClientAliveInterval 30\n" in fleet.run(SERVER, f"cat {dropin}").stdout
    pid = fleet.run(SERVER, "cat /run/sshd.pid").stdout.strip()
    run = faults.pyinfra("deploys/backup_server.py", inventory=inventory)
    assert run.returncode == 0, run.stdout
    assert fleet.run(SERVER, f"cat {dropin}").stdout.splitlines()[1:] == [
        "Match User borg", "    ClientAliveInterval 1", "    ClientAliveCountMax 3"]
    effective = fleet.run(SERVER, "/usr/sbin/sshd -T -C user=borg,host=x,addr=10.0.0.1 | grep -i '^clientalive'").stdout.split()
    assert effective == ["clientaliveinterval", "1", "clientalivecountmax", "3"], effective
    assert fleet.run(SERVER, "/usr/sbin/sshd -T -C user=root,host=x,addr=10.0.0.1 | grep -i '^clientaliveinterval'").stdout.split() == [
        "clientaliveinterval", "0"]  # only the repo users' sessions
    assert fleet.run(SERVER, "cat /run/sshd.pid").stdout.strip() == pid  # reloaded (SIGHUP: re-exec), not restarted
    again = faults.pyinfra("deploys/backup_server.py", inventory=inventory)
    assert again.returncode == 0 and "[backup] Success" not in again.stdout, again.stdout  # idempotent


def test_13_a_network_cut_mid_create_fails_the_host_in_bounded_time_next_run_completes(faults):
    fleet, repo = faults.fleet, faults.repo_dir("host02")
    server = fleet.host(SERVER).address
    kept = faults.ledger("host02")
    fleet.run("host02", "mkdir -p /srv/bulk && for i in $(seq 20); do head -c 100000 /dev/urandom > /srv/bulk/f$i; done")
    bulk = job(paths=["/srv/bulk"])
    del bulk["checks"]
    throttled = {**bulk, "extraCreateArgs": ["--checkpoint-interval", "1", "--upload-ratelimit", "250"]}

    def data(bulk_job):  # keepalives every second: ssh gives up after 3 unanswered
        client = faults.client_data("host02", {**faults.jobs["host02"], "bulk": bulk_job})
        return {"borgbackup": {**client["borgbackup"], "serverAliveInterval": 1}}

    alive = {SERVER: server_with(faults, clientAliveInterval=1)}  # as scenario 13a installed it: sshd probes every second
    inventory = faults.write_inventory("inventory-cut.py", host02=data(bulk), **alive)
    slow = faults.write_inventory("inventory-cut-slow.py", host02=data(throttled), **alive)
    commits = int(fleet.run(SERVER, f"wc -l < {repo}/transactions").stdout)
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("run", faults.backup("--limit", "host02", inventory=slow)))
    runner.start()
    try:
        def committed():  # the create is under way: its first checkpoint is in the repo
            assert runner.is_alive(), result["run"].stdout
            return int(fleet.run(SERVER, f"wc -l < {repo}/transactions").stdout) > commits

        wait_for(committed, 60, "a checkpoint")
        fleet.run("host02", f"ip route add blackhole {server}/32")  # silent: packets to the server vanish
        cut = time.monotonic()
        runner.join(timeout=45)
        ended = time.monotonic() - cut
        assert not runner.is_alive(), "the run still waits on a dead connection 45 s after the cut"
        # The server's `borg serve` only reads: it never learns of the cut itself. sshd's probes (the drop-in of
        # scenario 13a) go unanswered and sshd ends the session, and with it borg serve, while the route is still cut.
        serving = f"for p in $(pgrep -x borg); do [ \"$(readlink /proc/$p/cwd)\" = {repo} ] && echo $p; done; true"
        wait_for(lambda: not fleet.run(SERVER, serving).stdout.strip(), 20, "sshd to end the dead client's borg serve")
    finally:
        fleet.run("host02", f"ip route del blackhole {server}/32", check=False)
        runner.join()
    run = result["run"]
    assert run.returncode != 0 and ended < 30, (ended, run.stdout)
    # ssh's own words (`Timeout, server ... not responding`) do not reach borg's error: borg reports the close
    assert re.search(r"\[host02\] host02: job bulk: the repo server is unreachable \(Connection closed", run.stdout), run.stdout
    again = faults.backup("--limit", "host02", inventory=inventory)  # bulk is still due; nobody killed anything
    assert again.returncode == 0, again.stdout
    fresh = faults.freshness(inventory)["host02"]
    assert fresh["bulk"]["status"] == "fresh" and not fresh["bulk"]["last_archive"].endswith("checkpoint"), fresh
    kept.assert_kept()


# --- 14: a client's own append-only key deletes its archives and adds backdated ones --------------------


def test_14_an_append_only_delete_stops_maintenance_until_rollback_and_acknowledgement(faults):
    fleet, client = faults.fleet, "host03"
    kept_job = {"system": job(prune={"keep": {"within": "1d"}})}
    inventory = faults.write_inventory("inventory-ledger.py", host03=faults.client_data(client, kept_job))
    for _ in range(2):  # two real archives, each seen by the operator's listing of the prune step
        time.sleep(1)  # archive names have second resolution
        seen = faults.backup("--limit", client, "--data", "backup_force=true", inventory=inventory)
        assert seen.returncode == 0, seen.stdout
    real = faults.archives(client)
    kept = faults.ledger(client)
    before = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
    time.sleep(0.2)
    # The attack, with the client's own key, known_hosts and passCommand: every real archive deleted,
    # three small archives named like the job's, stamped in 2020 (prune.keep makes them due).
    client_borg = f"BORG_PASSCOMMAND='cat /root/borg-pass' BORG_RSH='{CLIENT_RSH}' borg"
    repo = f"borg@{fleet.host(SERVER).address}:."
    junk = [f"{client}-system-2020-01-01T00:00:0{i}" for i in range(3)]
    fleet.run(client, " && ".join([*(f"{client_borg} delete {repo}::{name}" for name in real),
                                   *(f"{client_borg} create --timestamp {name[-19:]} {repo}::{name} /etc/hostname" for name in junk)]))
    assert sorted(faults.archives(client)) == junk  # borg appears to obey the append-only key
    segments = {name for name in faults.repo_files(client) if name.startswith("./data/")}

    run = faults.backup("--limit", client, "--data", "backup_force=true", inventory=inventory)
    assert run.returncode != 0, run.stdout
    said = host_lines(run, client)
    assert "tampered" in said and "tasks.borg.rollback" in said and all(name in said for name in real + junk), said
    assert segments <= set(faults.repo_files(client))  # no compact: every segment is still there
    assert set(junk) <= set(faults.archives(client))  # no prune: the junk is still there
    assert faults.freshness(inventory)[client]["system"]["status"] == "tampered"
    again = faults.backup("--limit", client, inventory=inventory)  # nothing due: still failing, still stopped
    assert again.returncode != 0 and "tampered" in host_lines(again, client), again.stdout

    back = faults.pyinfra("tasks.borg.rollback", f"repo={client}", f"before={before}", "--limit", SERVER, inventory=inventory)
    assert back.returncode == 0, back.stdout
    forget = faults.pyinfra("tasks.borg.forget_repo_state", "job=system", "--limit", client, inventory=inventory)
    assert forget.returncode == 0, forget.stdout  # the client's and the operator's memory of the newer repo
    assert faults.archives(client) == real  # every real archive back...
    for name in real:  # ...and extractable
        data = faults.borg(client, "extract", "--stdout", f"{{repo}}::{name}", "srv/data/hello.txt")
        assert data.stdout == f"hello from {client}\n"
    ack = faults.pyinfra("tasks.borg.acknowledge_tampering", "job=system", "--limit", client, inventory=inventory)
    assert ack.returncode == 0 and "no archive lost" in ack.stdout, ack.stdout
    ack_again = faults.pyinfra("tasks.borg.acknowledge_tampering", "job=system", "--limit", client, inventory=inventory)
    assert ack_again.returncode == 0 and f"[{client}] No changes" in ack_again.stdout, ack_again.stdout
    assert faults.freshness(inventory)[client]["system"]["status"] == "fresh"
    time.sleep(1)
    after = faults.backup("--limit", client, "--data", "backup_force=true", inventory=inventory)
    assert after.returncode == 0, after.stdout
    assert len(faults.archives(client)) == len(real) + 1
    kept.assert_kept()


# --- 15: the operator's shell has borg variables of its own -------------------------------------------

# An operator whose shell is set up for borg of its own: every one of these would break (or redirect)
# the operator-side borg of the run if it were inherited.
SHELL_BORG = {"BORG_PASSPHRASE": "wrong", "BORG_PASSCOMMAND": "echo wrong", "BORG_REPO": "/nonexistent/repo",
              "BORG_RSH": "false", "BORG_KEY_FILE": "/nonexistent/key"}


def test_15_operator_side_prune_and_a_relayed_restore_ignore_the_borg_variables_of_the_operators_shell(faults):
    fleet, client = faults.fleet, "host01"
    kept = faults.ledger(client)
    # A job of its own that prunes (keep.daily=1), in the client's repo: its prune removes only its own archives.
    pruned = faults.write_inventory("inventory-pruned.py", host01=faults.client_data(
        client, {**faults.jobs[client], "pruned": job(prune={"keep": {"daily": 1}})}))
    first = faults.backup("--limit", client, "--data", "backup_force=true", inventory=pruned)
    assert first.returncode == 0, first.stdout

    def archives() -> list[str]:
        listing = faults.borg(client, "list", "--json", "--glob-archives", f"{client}-pruned-2*", "{repo}")
        return [archive["name"] for archive in json.loads(listing.stdout)["archives"]]

    # The run's environment with the operator's own BORG_* (BORG_BASE_DIR too: not the run's, which
    # PYINFRA_BACKUP_BORG_BASE_DIR names).
    shell_base = faults.tmp / "shell-borg-base"
    shell = {OPERATOR_BASE_DIR_VAR: faults.env["BORG_BASE_DIR"], **SHELL_BORG, "BORG_BASE_DIR": str(shell_base)}
    before = archives()
    time.sleep(1)  # archive names have second resolution
    run = faults.backup("--limit", client, "--data", "backup_force=true", inventory=pruned, env=shell)
    assert run.returncode == 0, run.stdout
    after = archives()
    assert len(after) == 1 and after != before, run.stdout  # keep.daily=1: the older archive was pruned, operator-side
    assert not shell_base.exists()

    try:
        restore = faults.pyinfra("tasks.relay.restore", "job=system", "target=/srv/restore", "--limit", client, env=shell)
        assert restore.returncode == 0, restore.stdout
        assert tree(fleet, client, "/srv/restore/srv/data") == tree(fleet, client, "/srv/data")
        assert not shell_base.exists()
    finally:
        fleet.run(client, "rm -rf /srv/restore")
    kept.assert_kept()  # borg check clean (after the forced prune and compact), no archive of before lost


# --- 16: a repo server reached without strict host key checking ---------------------------------------


def unstrict_inventory(faults, filename: str, server_connection: dict) -> Path:
    """The suite's inventory with the repo server's SSH connection data replaced (the clients' stay strict)."""
    fleet = faults.fleet
    entries = [*((name, {**fleet.connection_data(name), **faults.client_data(name)}) for name in CLIENTS),
               (SERVER, {**server_connection, **faults.server_data})]
    path = faults.tmp / filename
    path.write_text("hosts = [\n" + "".join(f"    {entry!r},\n" for entry in entries) + "]\n\n"
                    f"clients = {CLIENTS!r}\n\nservers = {[SERVER]!r}\n")
    return path


def test_16_a_repo_server_reached_without_strict_host_key_checking_is_refused_before_anything_changes(faults):
    fleet, hosts = faults.fleet, [*CLIENTS, SERVER]
    kept = faults.ledger(*CLIENTS)
    served = fleet.run(SERVER, "for key in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $key; done").stdout.split("\n")
    for setting in ("unset", "accept-new", "no", "off"):
        connection = {key: value for key, value in fleet.connection_data(SERVER).items()
                      if key != "ssh_strict_host_key_checking"}
        if setting != "unset":
            connection["ssh_strict_host_key_checking"] = setting
        if setting == "accept-new":  # a file without the server's key: pyinfra's connection adds whatever answers
            unpinned = faults.tmp / "known_hosts.unpinned"
            key = fleet.host_key(SERVER)
            unpinned.write_text("".join(line + "\n" for line in fleet.known_hosts_path.read_text().splitlines()
                                        if key not in line))
            connection["ssh_known_hosts_file"] = str(unpinned)
        inventory = unstrict_inventory(faults, f"inventory-unstrict-{setting}.py", connection)
        names = dict(zip(CLIENTS, _each(faults.archives, CLIENTS)))  # (the operator's borg: execs on the server, before the count)
        before = {name: fleet.exec_count(name) for name in hosts}
        run = faults.backup("--data", "backup_force=true", inventory=inventory)
        assert run.returncode != 0, (setting, run.stdout)
        assert f'{SERVER}: ssh_strict_host_key_checking: expected "yes" for a repo server' in run.stdout, (setting, run.stdout)
        assert ("unset (pyinfra's default: accept-new" in run.stdout) == (setting == "unset"), (setting, run.stdout)
        for line in filter(None, served):  # the fingerprint of every key the server has, as ssh-keyscan saw it here
            bits, fingerprint, *_ = line.split()
            assert f"ssh-keyscan -p {fleet.host(SERVER).ssh_port} {fleet.host(SERVER).address}: {bits} {fingerprint} " in run.stdout, (
                setting, line, run.stdout)
        assert {name: fleet.exec_count(name) for name in hosts} == before, setting  # no remote command, anywhere
        assert dict(zip(CLIENTS, _each(faults.archives, CLIENTS))) == names, setting  # no archive, none gone
    kept.assert_kept()


# --- 17: a relayed restore whose stream is cut ---------------------------------------------------------

# The operator's borg as a wrapper: `export-tar` emits every member of the real stream before the last
# regular file's header (a cut at a file boundary: GNU tar exits 0 on it) and exits 2; the rest is borg.
CUT_BORG = r"""#!/usr/bin/python3
import io, os, subprocess, sys, tarfile
argv = ["/usr/bin/borg", *sys.argv[1:]]
if "export-tar" not in argv:
    os.execv(argv[0], argv)
fd = int(os.environ["BORG_PASSPHRASE_FD"])
whole = subprocess.run(argv, stdout=subprocess.PIPE, pass_fds=(fd,), check=True).stdout
with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
    last = [member for member in tar.getmembers() if member.isfile()][-1]
sys.stdout.buffer.write(whole[:last.offset])
sys.stdout.flush()
sys.stderr.write("Connection closed by remote host\n")
sys.exit(2)
"""
# What a relayed restore may change on the host: the target, markers, kept files, stages.
RESTORE_STATE = ("cd /srv/cut && find . -printf '%p %s %m\\n' | sort && cat srv/data/hello.txt; "
                 "ls -A /var/lib/pyinfra-backup/restores /var/lib/pyinfra-backup/replaced /var/lib/pyinfra-backup/relay "
                 "2>&1")


def test_17_a_relayed_restore_cut_mid_stream_changes_nothing_in_place_and_the_next_run_restores_fully(faults):
    fleet, client = faults.fleet, "host01"  # scenario 15's client: its relay directory is there since that restore
    kept = faults.ledger(client)
    wrapper = faults.tmp / "cut-borg"  # on PATH for the cut run only: every other run has the real borg
    wrapper.mkdir()
    (wrapper / "borg").write_text(CUT_BORG)
    (wrapper / "borg").chmod(0o755)
    restore = ("tasks.relay.restore", "job=system", "target=/srv/cut", "overwrite=true", "--limit", client)
    try:
        fleet.run(client, "rm -rf /srv/cut && mkdir -p /srv/cut/srv/data && echo live > /srv/cut/srv/data/hello.txt")
        before = fleet.run(client, RESTORE_STATE, check=False).stdout
        cut = faults.pyinfra(*restore, env={"PATH": f"{wrapper}:{os.environ['PATH']}"})
        assert cut.returncode != 0
        assert fleet.run(client, RESTORE_STATE, check=False).stdout == before  # no file, no marker, no stage left
        assert "failed on the operator's machine: Connection closed by remote host; nothing in place changed" in cut.stdout, cut.stdout

        full = faults.pyinfra(*restore)
        assert full.returncode == 0, full.stdout
        assert "replaced /srv/cut/srv/data/hello.txt" in full.stdout and "on both ends" in full.stdout, full.stdout
        assert tree(fleet, client, "/srv/cut/srv/data") == tree(fleet, client, "/srv/data")
        again = faults.pyinfra(*restore, "-v")
        assert again.returncode == 0 and "already restored" in again.stdout, again.stdout
        assert fleet.run(client, "ls -A /var/lib/pyinfra-backup/relay").stdout == ""
    finally:
        fleet.run(client, "rm -rf /srv/cut")
    kept.assert_kept()


# --- 11: secret hygiene, over every run of this file --------------------------------------------------


def test_11_secrets_never_in_argv_output_or_logs(faults):
    run = faults.backup("-vvv", "--data", "backup_force=true", "--limit", "host01")
    assert run.returncode == 0, run.stdout
    assert any(" create " in argv and "borg" in argv for argv in faults.argv_samples.seen)  # we looked while borg ran
    logs = {name: faults.fleet.run(name, "cat /var/log/sshd.log /var/lib/pyinfra-backup/jobs/*/*", check=False).stdout
            for name in [*CLIENTS, SERVER]}
    for label, secret in faults.secrets().items():
        assert not any(secret in argv for argv in faults.argv_samples.seen), f"{label} in a process's argv"
        assert not any(secret in output for output in faults.outputs), f"{label} in pyinfra output"
        assert not any(secret in text for text in logs.values()), f"{label} in a log"
