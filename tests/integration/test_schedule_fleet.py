"""The scheduled fleet run (`deploys/schedule.py`) installed on an operator's machine (a fleet host of its
own), its units checked by `systemd-analyze verify`, and the service's ExecStart run as the unit says
(its User=, its home, systemd's PATH) against a repo server and two clients: a real backup (host01 enrolled on the server, host02 to a local repo),
then a run whose prune runs as the service's user (its key, its archive ledger in its home) and which exits
non-zero because host02 failed. systemd is not PID 1 here, so the timer itself never fires: its file is verified instead."""

from __future__ import annotations

import shlex
import time

import pytest

from pyinfra_backup.scheduler import DEFAULT_HOME, SYSTEMD_PATH, parse_exec_start, parse_unit
from tests.integration.helpers import PROJECT, pyinfra

pytestmark = pytest.mark.fleet

OPERATOR = "operator"
CLIENTS = ["host01", "host02"]
SERVER = "backup"
INVENTORY = "/etc/pyinfra-backup/fleet.py"
UNITS = "/etc/systemd/system"
REPO = "/var/lib/pbk-sched/repo"
SSH = f"{DEFAULT_HOME}/.ssh"


def host_data(fleet) -> dict[str, dict]:
    """host01: a job on the repo server, pruned (keep one a day) by the operator, i.e. by the service's user
    with its own key (`operatorIdentity` default `~/.ssh/id_ed25519`); host02: a local unencrypted repo."""
    fleet_job = {"paths": ["/srv/sched-data"], "repo": f"borg@{SERVER}:.", "startAt": "daily",
                 "encryption": {"mode": "repokey-blake2", "passCommand": "cat /root/borg-pass"},
                 "prune": {"keep": {"daily": 1}}}
    local_job = {"paths": ["/srv/sched-data"], "repo": REPO, "encryption": {"mode": "none"}, "startAt": "daily"}
    operator_key = fleet.key_path.with_suffix(".pub").read_text().strip()  # the user's copy of it, see below
    return {"host01": {"borgbackup": {"jobs": {"system": fleet_job}}},
            "host02": {"borgbackup": {"jobs": {"system": local_job}}},
            SERVER: {"borgbackup": {"repos": {}, "operatorKeys": [operator_key]}}}


def fleet_inventory(fleet) -> str:
    """The fleet's inventory as the operator's user reads it: its own copy of the key and known_hosts."""
    entries = []
    for name, data in host_data(fleet).items():
        data = {**fleet.connection_data(name), **data, "ssh_key": f"{SSH}/id_ed25519",
                "ssh_known_hosts_file": f"{SSH}/known_hosts"}
        data.pop("ssh_config_file")
        entries.append((name, data))
    return "hosts = [\n" + "".join(f"    {entry!r},\n" for entry in entries) + "]\n"


def server_archives(fleet, client: str) -> list[str]:
    """The client's archives, listed on the server itself (root, the repo's directory, the passphrase)."""
    pass_ = fleet.run(client, "cat /root/borg-pass").stdout.rstrip("\n")  # as borg reads a passCommand
    run = fleet.run(SERVER, f"BORG_PASSPHRASE={shlex.quote(pass_)} BORG_BASE_DIR=/tmp/pbk-sched-borg "
                            f"BORG_RELOCATED_REPO_ACCESS_IS_OK=yes borg list --short /var/lib/borgbackup/{client}")
    return run.stdout.split()


def schedule(fleet, tmp_path, *data: str):
    """deploys/schedule.py on the operator host (reached over SSH as root, as `@local` on a real one)."""
    inventory = fleet.write_inventory(tmp_path / "operator.py", groups={})
    (tmp_path / "operator-only.py").write_text(
        inventory.read_text() + f"hosts = [h for h in hosts if h[0] == {OPERATOR!r}]\n")
    args = [f"--data=schedule_{item}" for item in ("inventory=" + INVENTORY, *data)]
    return pyinfra(tmp_path / "operator-only.py", str(PROJECT / "deploys/schedule.py"), *args)


def exec_start_as_the_unit(fleet) -> tuple[list[str], str]:
    """The installed service's ExecStart, run as its User= from its WorkingDirectory=~ with systemd's
    PATH and its Environment=, in the operator host: (argv, the shell command)."""
    service = parse_unit(fleet.run(OPERATOR, f"cat {UNITS}/pyinfra-backup.service").stdout)["Service"]
    argv = parse_exec_start(service["ExecStart"])
    user, home = service["User"], fleet.run(OPERATOR, f"getent passwd {service['User']} | cut -d: -f6").stdout.strip()
    assert service["WorkingDirectory"] == "~" and home == DEFAULT_HOME
    env = ["env", "-i", f"PATH={SYSTEMD_PATH}", f"HOME={home}", f"USER={user}", f"LOGNAME={user}",
           service["Environment"]]
    command = shlex.join(["runuser", "-u", user, "--", *env, "sh", "-c", 'cd "$HOME" && exec "$@"', "sh", *argv])
    return argv, command


def test_schedule_installs_verified_units_whose_command_backs_up_the_fleet(fleet_factory, tmp_path):
    fleet = fleet_factory([OPERATOR, *CLIENTS, SERVER])
    for name in CLIENTS:
        fleet.run(name, "mkdir -p /srv/sched-data && echo \"data of $(hostname)\" > /srv/sched-data/file && "
                        "umask 077 && head -c 24 /dev/urandom | base64 > /root/borg-pass")
    fleet.run(OPERATOR, f"mkdir -p /etc/pyinfra-backup && umask 077 && cat > {INVENTORY}", input=fleet_inventory(fleet))

    # the service's user cannot read the inventory (0600 root): refused before any unit file is written
    refused = schedule(fleet, tmp_path)
    assert refused.returncode != 0
    assert f"pyinfra-backup cannot read {INVENTORY}" in refused.stdout, refused.stdout
    assert fleet.run(OPERATOR, f"ls {UNITS}/pyinfra-backup.* 2>&1 || true").stdout.count("No such file") == 1
    assert fleet.run(OPERATOR, f"stat -c %U {DEFAULT_HOME}").stdout.strip() == "pyinfra-backup"  # the user was made

    # what the README says the user needs: read access to the inventory and the key that reaches the hosts
    fleet.run(OPERATOR, f"chgrp pyinfra-backup {INVENTORY} && chmod 0640 {INVENTORY} && "
                        f"install -d -o pyinfra-backup -g pyinfra-backup -m 0700 {SSH}")
    fleet.run(OPERATOR, f"install -o pyinfra-backup -m 0600 /dev/stdin {SSH}/id_ed25519",
              input=fleet.key_path.read_text())
    fleet.run(OPERATOR, f"install -o pyinfra-backup -m 0644 /dev/stdin {SSH}/known_hosts",
              input=fleet.known_hosts_path.read_text())
    installed = schedule(fleet, tmp_path)
    assert installed.returncode == 0, installed.stdout
    again = schedule(fleet, tmp_path)
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout
    assert "[operator] Success" in again.stdout or "No changes" in again.stdout

    units = f"{UNITS}/pyinfra-backup.service {UNITS}/pyinfra-backup.timer"
    verify = fleet.run(OPERATOR, f"systemd-analyze verify {units}", check=False)
    assert verify.returncode == 0 and verify.stdout == verify.stderr == "", verify
    timer = parse_unit(fleet.run(OPERATOR, f"cat {UNITS}/pyinfra-backup.timer").stdout)["Timer"]
    assert timer == {"OnCalendar": "*-*-* *:00/15:00", "RandomizedDelaySec": "300", "FixedRandomDelay": "true",
                     "Persistent": "true", "Unit": "pyinfra-backup.service"}
    link = fleet.run(OPERATOR, f"readlink {UNITS}/timers.target.wants/pyinfra-backup.timer").stdout.strip()
    assert link == f"{UNITS}/pyinfra-backup.timer"  # enabled, as `systemctl enable` links it
    modes = fleet.run(OPERATOR, f"stat -c '%a %U' {units}").stdout.split("\n")[:2]
    assert modes == ["644 root", "644 root"]
    assert fleet.run(OPERATOR, f"ls -a {UNITS} | grep -c 'pyinfra-backup\\..*\\.' || true").stdout.strip() == "0"

    # the service's command, as the unit runs it: host01 enrolled, a real backup of both clients
    argv, command = exec_start_as_the_unit(fleet)
    assert argv == [f"{PROJECT}/.venv/bin/pyinfra", "-y", INVENTORY, f"{PROJECT}/deploys/backup.py"]
    # first, as the README says, the repo server provisioned (by the same user: its key becomes an operator key)
    provision = fleet.run(OPERATOR, command.replace("/deploys/backup.py", "/deploys/backup_server.py"), timeout=300)
    assert "[backup] Success" in provision.stdout + provision.stderr, provision.stdout + provision.stderr
    started = time.monotonic()
    first = fleet.run(OPERATOR, command, check=False, timeout=300)
    took = time.monotonic() - started
    assert first.returncode == 0, first.stdout + first.stderr
    [archive] = server_archives(fleet, "host01")
    assert archive.startswith("host01-system-")
    listing = fleet.run("host02", f"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes borg list --short {REPO}").stdout
    assert listing.startswith("host02-system-"), listing
    print(f"ExecStart, first run (host01 enrolled, 2 first backups): {took:.1f} s")
    again = fleet.run(OPERATOR, command, check=False, timeout=300)
    assert again.returncode == 0 and "[host01] No changes" in again.stdout + again.stderr, again.stdout + again.stderr

    # both jobs due again (their records gone), host02's repo replaced by a file: host01 backs up and its
    # prune runs here as the service's user (its key, its ledger in its home); host02 fails, so does the run
    fleet.run("host01", "rm -rf /var/lib/pyinfra-backup/jobs/system")
    fleet.run("host02", f"rm -rf /var/lib/pyinfra-backup/jobs/system {REPO} && touch {REPO}")
    failed = fleet.run(OPERATOR, command, check=False, timeout=300)
    assert failed.returncode != 0, failed.stdout + failed.stderr
    output = failed.stdout + failed.stderr
    assert "[host02] host02: job system: There is already something at" in output, output
    [newer] = server_archives(fleet, "host01")  # a second archive made, the first pruned (keep one a day)
    assert newer.startswith("host01-system-") and newer != archive, (archive, newer)
    ledger = fleet.run(OPERATOR, f"find {DEFAULT_HOME}/.local/state/pyinfra-backup/ledger -type f -printf '%u %p\\n'")
    assert ledger.stdout.startswith("pyinfra-backup ") and ledger.stdout.count("\n") == 1, ledger.stdout

    # removed: both units and the link gone, the user's home (the operator's ledger, its key) kept
    removed = schedule(fleet, tmp_path, "present=false")
    assert removed.returncode == 0, removed.stdout
    left = fleet.run(OPERATOR, f"ls {UNITS}/pyinfra-backup.* {UNITS}/timers.target.wants/pyinfra-backup.timer "
                               "2>/dev/null | wc -l").stdout.strip()
    assert left == "0"
    assert fleet.run(OPERATOR, f"test -f {SSH}/id_ed25519", check=False).returncode == 0
    gone_again = schedule(fleet, tmp_path, "present=false")
    assert gone_again.returncode == 0 and "No changes" in gone_again.stdout, gone_again.stdout
