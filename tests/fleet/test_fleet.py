"""The namespace SSH test fleet itself: identity per host, real pyinfra over ssh, isolation, teardown."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet import BRIDGE, NET_PREFIX, PREFIX, PROJECT_ROOT, Fleet, cleanup_leftovers, discover

pytestmark = pytest.mark.fleet

PYINFRA = Path(sys.executable).with_name("pyinfra")
DEPLOY = Path(__file__).with_name("deploy_probe.py")


def _first_fields(line: str) -> str:
    return " ".join(line.split()[:2])


def assert_slot_gone(slot: int, state_dir: Path, pids: list[int]) -> None:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [n for n in netns.split("\n") if n.startswith(f"{PREFIX}{slot}-")], netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert f" {PREFIX}{slot}-" not in links, links
    mountinfo = Path("/proc/self/mountinfo").read_text()
    assert str(state_dir) not in mountinfo and f"{PREFIX}fleet-{slot} " not in mountinfo
    assert not state_dir.exists()
    for pid in pids:  # reaped, not just killed: the fleet's owner is a child subreaper
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} left behind"
    assert slot not in discover()["fleets"]


def test_pyinfra_deploy_runs_on_every_host_in_its_own_overlay(fleet, tmp_path):
    names = [h.name for h in fleet.hosts]
    assert names == ["host01", "host02", "host03", "host04", "host05", "backup"]
    inventory = fleet.write_inventory(
        tmp_path / "inventory.py", host_data={name: {"probe_token": f"t-{name}"} for name in names}
    )
    before = {name: fleet.exec_count(name) for name in names}
    proc = subprocess.run(
        [str(PYINFRA), "-y", str(inventory), str(DEPLOY.relative_to(PROJECT_ROOT))],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    machine_key = _first_fields(Path("/etc/ssh/ssh_host_ed25519_key.pub").read_text())
    machine_id = Path("/etc/machine-id").read_text().strip()
    ids, keys = set(), set()
    for host in fleet.hosts:
        name = host.name
        group = "servers" if name == "backup" else "clients"
        out = fleet.run(name, "hostname; cat /etc/hostname /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub "
                              "/root/pbk-probe.txt; stat -c %a /etc/ssh/ssh_host_ed25519_key; "
                              "echo /etc/ssh/ssh_host_*").stdout.split("\n")
        assert out[0] == out[1] == name
        assert out[2] == host.machine_id and len(out[2]) == 32 and out[2] != machine_id
        assert _first_fields(out[3]) == fleet.host_key(name) != machine_key
        assert out[4] == f"{name} {name} {group} t-{name}"  # inventory name, Hostname fact, group, host data
        assert out[5] == "600"
        assert out[6] == "/etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub"  # machine's: whited out
        ids.add(out[2])
        keys.add(out[3])
        assert (host.upper / "root/pbk-probe.txt").exists()  # landed in this host's upper layer
        assert fleet.exec_count(name) > before[name]
    assert len(ids) == len(keys) == len(names)
    assert not Path("/root/pbk-probe.txt").exists()  # ... and not on the machine
    known = fleet.known_hosts_path.read_text()
    for host in fleet.hosts:
        assert f"{host.name},{host.address} {fleet.host_key(host.name)}\n" in known
    inv_text = inventory.read_text()
    assert "clients = ['host01', 'host02', 'host03', 'host04', 'host05']" in inv_text
    assert "servers = ['backup']" in inv_text
    assert "'ssh_strict_host_key_checking': 'yes'" in inv_text


def test_users_and_files_stay_in_their_host(fleet):
    fleet.run("host03", "useradd -M pbk-user && touch /etc/pbk-only-host03")
    try:
        assert fleet.run("host03", "id -u pbk-user").returncode == 0
        assert fleet.run("host04", "id -u pbk-user", check=False).returncode != 0
        assert fleet.run("host04", "test -e /etc/pbk-only-host03", check=False).returncode != 0
        assert subprocess.run(["id", "-u", "pbk-user"], capture_output=True).returncode != 0
        assert not Path("/etc/pbk-only-host03").exists()
    finally:
        fleet.run("host03", "userdel pbk-user; rm -f /etc/pbk-only-host03")


def test_hosts_reach_each_other_over_the_bridge_only(fleet):
    for client in ("host01", "host02", "host03", "host04", "host05"):
        banner = fleet.run(client, "exec 3<>/dev/tcp/backup/22 && head -c 4 <&3").stdout
        assert banner == "SSH-"
        routes = fleet.run(client, "ip -4 route").stdout.strip().split("\n")
        assert len(routes) == 1 and routes[0].split()[:3] == [f"{NET_PREFIX}.0.0/16", "dev", "pbk-eth0"]  # no default
    # Real ssh from one host to another, host key checked against /etc/ssh/ssh_known_hosts of the host.
    fleet.run("host01", "ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/pbk-peer")
    pub = fleet.run("host01", "cat /root/.ssh/pbk-peer.pub").stdout
    authorized = fleet.path("backup", "/root/.ssh/authorized_keys")
    original = authorized.read_text()
    authorized.write_text(original + pub)
    try:
        out = fleet.run(
            "host01", "ssh -i /root/.ssh/pbk-peer -o BatchMode=yes -o StrictHostKeyChecking=yes backup hostname"
        ).stdout
        assert out.strip() == "backup"
    finally:
        authorized.write_text(original)
        fleet.run("host01", "rm -f /root/.ssh/pbk-peer /root/.ssh/pbk-peer.pub /root/.ssh/known_hosts")


def test_exec_count_rises_by_one_per_ssh_command(fleet):
    before = fleet.exec_count("host02")
    subprocess.run(fleet.ssh_command("host02", "true"), check=True, timeout=30)
    assert fleet.exec_count("host02") == before + 1


def test_down_leaves_nothing_behind(fleet):
    fleets_before = set(discover()["fleets"])  # other people's fleets may be up too
    other = Fleet()
    other.up(["t1", "t2", "t3"])
    slot, state_dir = other.slot, other.state_dir
    assert slot != fleet.slot
    other.run("t1", "setsid sleep 1000 >/dev/null 2>&1 </dev/null &")  # a stray daemon inside a host
    pids = [h.pid for h in other.hosts] + [h._proc.pid for h in other.hosts]
    pids += [int(p) for p in subprocess.run(["ip", "netns", "pids", f"{PREFIX}{slot}-t1"],
                                            capture_output=True, text=True).stdout.split()]
    other.remove("t2")
    assert [h.name for h in other.hosts] == ["t1", "t3"]
    other.down()
    assert_slot_gone(slot, state_dir, pids)
    assert set(discover()["fleets"]) == fleets_before  # the session fleet (and any other) untouched
    assert fleet.slot in fleets_before
    assert Path("/sys/class/net", BRIDGE).exists()
    assert fleet.run("host01", "hostname").stdout.strip() == "host01"


def test_down_is_quick_when_a_process_entered_from_outside_lost_its_parent():
    """A process started with nsenter whose nsenter parent was killed becomes a zombie that only
    we can reap; the host's init (PID 1 of its namespace) cannot exit until it is reaped."""
    import time

    other = Fleet()
    other.up(["z1"])
    slot, state_dir = other.slot, other.state_dir
    entered = subprocess.Popen(["nsenter", "-t", str(other.host("z1").pid), "--net", "--mount", "--uts", "--pid",
                                "--root", "--wd", "--", "/bin/sh", "-c", "sleep 60"])
    time.sleep(0.3)
    entered.kill()
    entered.wait()
    other.run("z1", "pkill -x sleep")
    started = time.monotonic()
    other.down()
    assert time.monotonic() - started < 5
    assert_slot_gone(slot, state_dir, [])


def test_cleanup_leftovers_after_a_crash(fleet):
    code = (
        "import json, os, subprocess\n"
        "from tests.fleet import Fleet\n"
        "f = Fleet(); f.up(['c1', 'c2'])\n"
        "f.run('c1', 'setsid sleep 1000 >/dev/null 2>&1 </dev/null &')\n"
        "pids = [h.pid for h in f.hosts] + [h._proc.pid for h in f.hosts]\n"
        "print(json.dumps({'slot': f.slot, 'state_dir': str(f.state_dir), 'pids': pids}), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    info = json.loads(proc.stdout)
    slot, state_dir = info["slot"], Path(info["state_dir"])
    left = discover()["fleets"][slot]
    assert len(left["netns"]) == 2 and len(left["links"]) == 2 and left["mounts"] and not left["alive"]

    assert slot in cleanup_leftovers()  # the dead fleet (and other dead ones): the session fleet's owner is alive
    assert fleet.slot in discover()["fleets"]
    assert_slot_gone(slot, state_dir, info["pids"])
    subprocess.run(fleet.ssh_command("host05", "true"), check=True, timeout=30)


def test_cli_up_status_down(fleet, tmp_path):
    cli = [sys.executable, "-m", "tests.fleet", "--state-root", str(tmp_path)]
    up = subprocess.run(cli + ["up", "2"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    try:
        assert up.returncode == 0, up.stderr
        inventory = Path(up.stdout.strip())
        assert inventory == tmp_path / "inventory.py" and inventory.exists()
        info = json.loads((tmp_path / "cli.json").read_text())
        assert [h["name"] for h in info["hosts"]] == ["host01", "host02", "backup"]
        assert "servers = ['backup']" in inventory.read_text()
        ssh = ["ssh", "-F", info["ssh_config"], "backup", "hostname"]
        out = subprocess.run(ssh, capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "backup", out.stderr
        status = subprocess.run(cli + ["status"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30)
        assert f"slot {info['slot']}, keeper {info['keeper_pid']} up" in status.stdout
    finally:
        down = subprocess.run(cli + ["down"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not inventory.exists()
    assert_slot_gone(info["slot"], Path(info["state_dir"]), [h["pid"] for h in info["hosts"]])  # keeper reaped them
    # The keeper's parent (`up`) is gone, so it was reparented to us (the subreaper) or to PID 1.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(info["keeper_pid"], 0)
    assert not Path(f"/proc/{info['keeper_pid']}/exe").exists()
