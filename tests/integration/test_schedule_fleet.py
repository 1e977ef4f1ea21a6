"""The scheduled fleet run (`deploys/schedule.py`) installed on an operator's machine (a fleet host of its
own), its units checked by `systemd-analyze verify`, and the service's ExecStart run as the unit says
(its User=, its home, systemd's PATH) against two clients: a real backup, then a non-zero exit when a host
fails. systemd is not PID 1 here, so the timer itself never fires: its file is verified instead."""

from __future__ import annotations

import shlex
import time

import pytest

from pyinfra_backup.scheduler import DEFAULT_HOME, SYSTEMD_PATH, parse_exec_start, parse_unit
from tests.integration.helpers import PROJECT, pyinfra

pytestmark = pytest.mark.fleet

OPERATOR = "operator"
CLIENTS = ["host01", "host02"]
INVENTORY = "/etc/pyinfra-backup/fleet.py"
UNITS = "/etc/systemd/system"
REPO = "/var/lib/pbk-sched/repo"
SSH = f"{DEFAULT_HOME}/.ssh"


def client_job() -> dict:
    return {"borgbackup": {"jobs": {"system": {"paths": ["/srv/sched-data"], "repo": REPO,
                                               "encryption": {"mode": "none"}, "startAt": "daily"}}}}


def fleet_inventory(fleet) -> str:
    """The clients' inventory as the operator's user reads it: its own copy of the key and known_hosts."""
    entries = []
    for name in CLIENTS:
        data = {**fleet.connection_data(name), **client_job(), "ssh_key": f"{SSH}/id_ed25519",
                "ssh_known_hosts_file": f"{SSH}/known_hosts"}
        data.pop("ssh_config_file")
        entries.append((name, data))
    return "hosts = [\n" + "".join(f"    {entry!r},\n" for entry in entries) + "]\n"


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
    fleet = fleet_factory([OPERATOR, *CLIENTS])
    for name in CLIENTS:
        fleet.run(name, "mkdir -p /srv/sched-data && echo \"data of $(hostname)\" > /srv/sched-data/file")
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

    # the service's command, as the unit runs it: a real backup of both clients
    argv, command = exec_start_as_the_unit(fleet)
    assert argv == [f"{PROJECT}/.venv/bin/pyinfra", "-y", INVENTORY, f"{PROJECT}/deploys/backup.py"]
    started = time.monotonic()
    first = fleet.run(OPERATOR, command, check=False, timeout=300)
    took = time.monotonic() - started
    assert first.returncode == 0, first.stdout + first.stderr
    for name in CLIENTS:
        listing = fleet.run(name, f"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes borg list --short {REPO}").stdout
        assert listing.startswith(f"{name}-system-"), listing
    print(f"ExecStart, first run (2 first backups): {took:.1f} s")

    # host02's job due again (its records gone) and its repo replaced by a file: the run fails, host01 does not
    fleet.run("host02", f"rm -rf /var/lib/pyinfra-backup/jobs/system {REPO} && touch {REPO}")
    failed = fleet.run(OPERATOR, command, check=False, timeout=300)
    assert failed.returncode != 0, failed.stdout + failed.stderr
    output = failed.stdout + failed.stderr
    assert "[host02] host02: job system: There is already something at" in output, output
    assert "[host01] No changes" in output or "[host01] Success" in output, output

    # removed: both units and the link gone, the user's home (the operator's ledger, its key) kept
    removed = schedule(fleet, tmp_path, "present=false")
    assert removed.returncode == 0, removed.stdout
    left = fleet.run(OPERATOR, f"ls {UNITS}/pyinfra-backup.* {UNITS}/timers.target.wants/pyinfra-backup.timer "
                               "2>/dev/null | wc -l").stdout.strip()
    assert left == "0"
    assert fleet.run(OPERATOR, f"test -f {SSH}/id_ed25519", check=False).returncode == 0
    gone_again = schedule(fleet, tmp_path, "present=false")
    assert gone_again.returncode == 0 and "No changes" in gone_again.stdout, gone_again.stdout
