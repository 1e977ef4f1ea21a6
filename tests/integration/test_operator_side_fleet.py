"""What the operator's machine brings to a run (issue 15): borg there takes no BORG_* variable of the
operator's shell, and a repo server the operator reaches without strict host key checking is refused
before anything changes.

The tests run in file order on one setup: a repo server and a client enrolled by a real backup run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from pyinfra_backup.borg import OPERATOR_BASE_DIR_VAR
from tests.fleet import Fleet
from tests.integration.helpers import DATA_SETUP, borg_job, operator_borg, pyinfra, tree

pytestmark = pytest.mark.fleet

CLIENT, SERVER = "opside01", "backup"
# An operator whose shell is set up for borg of its own: every one of these would break (or redirect)
# the operator-side borg of the run if it were inherited.
SHELL_BORG = {"BORG_PASSPHRASE": "wrong", "BORG_PASSCOMMAND": "echo wrong", "BORG_REPO": "/nonexistent/repo",
              "BORG_RSH": "false", "BORG_KEY_FILE": "/nonexistent/key"}


@pytest.fixture(scope="module")
def setup(_fleet_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("operator-side")
    with Fleet() as fleet:
        fleet.up([CLIENT, SERVER])
        op_key = tmp / "operator_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(op_key)], check=True)
        passphrase = "pp-opside-" + op_key.read_bytes().hex()[-24:]
        fleet.run(CLIENT, f"export PASS={passphrase}\n" + DATA_SETUP)
        client = {"borgbackup": {"jobs": {"system": borg_job(SERVER, prune={"keep": {"daily": 1}})},
                                 "operatorIdentity": str(op_key)}}
        server = {"borgbackup": {"repos": {}, "operatorKeys": [op_key.with_suffix(".pub").read_text().strip()]}}
        data = {CLIENT: client, SERVER: server}
        inventory = fleet.write_inventory(tmp / "inventory.py", data)
        env = {"BORG_BASE_DIR": str(tmp / "operator-borg")}
        for deploy in ("deploys/backup_server.py", "deploys/backup.py"):
            run = pyinfra(inventory, deploy, env=env)
            assert run.returncode == 0, run.stdout
        yield {"fleet": fleet, "tmp": tmp, "inventory": inventory, "data": data, "env": env, "op_key": op_key,
               "pass": {CLIENT: passphrase}}


def archives(setup) -> list[str]:
    listing = operator_borg(setup, CLIENT, "list", "--json", "--glob-archives", f"{CLIENT}-system-2*", "{repo}")
    return [archive["name"] for archive in json.loads(listing.stdout)["archives"]]


def shell_env(setup) -> dict:
    """The run's environment with the operator's own BORG_* (BORG_BASE_DIR too: not the run's)."""
    return {OPERATOR_BASE_DIR_VAR: setup["env"]["BORG_BASE_DIR"], **SHELL_BORG,
            "BORG_BASE_DIR": str(setup["tmp"] / "shell-borg-base")}


def test_prune_on_the_operator_ignores_the_borg_variables_of_the_operators_shell(setup):
    before = archives(setup)
    time.sleep(1)  # archive names have second resolution
    run = pyinfra(setup["inventory"], "deploys/backup.py", "--data", "backup_force=true", env=shell_env(setup))
    assert run.returncode == 0, run.stdout
    after = archives(setup)
    assert len(after) == 1 and after != before, run.stdout  # keep.daily=1: the older archive was pruned, operator-side
    assert not (setup["tmp"] / "shell-borg-base").exists()
    check = operator_borg(setup, CLIENT, "check", "{repo}", check=False)
    assert check.returncode == 0, check.stderr


def test_a_relayed_restore_ignores_the_borg_variables_of_the_operators_shell(setup):
    fleet = setup["fleet"]
    run = pyinfra(setup["inventory"], "tasks.relay.restore", "job=system", "target=/srv/restore", "--limit", CLIENT,
                  env=shell_env(setup))
    assert run.returncode == 0, run.stdout
    assert tree(fleet, CLIENT, "/srv/restore/srv/data") == tree(fleet, CLIENT, "/srv/data")
    assert not (setup["tmp"] / "shell-borg-base").exists()


def write_inventory(setup, path, server_connection: dict):
    """The setup's inventory with the repo server's SSH connection data replaced (the client's stays strict)."""
    fleet, data = setup["fleet"], setup["data"]
    entries = [(CLIENT, {**fleet.connection_data(CLIENT), **data[CLIENT]}), (SERVER, {**server_connection, **data[SERVER]})]
    path.write_text("hosts = [\n" + "".join(f"    {entry!r},\n" for entry in entries) + "]\n")
    return path


@pytest.mark.parametrize("setting", ["unset", "accept-new", "no", "off"])
def test_a_repo_server_reached_without_strict_host_key_checking_is_refused_before_anything_changes(setup, setting):
    fleet, tmp = setup["fleet"], setup["tmp"]
    connection = {key: value for key, value in fleet.connection_data(SERVER).items()
                  if key != "ssh_strict_host_key_checking"}
    if setting != "unset":
        connection["ssh_strict_host_key_checking"] = setting
    if setting == "accept-new":  # a file without the server's key: pyinfra's connection adds whatever answers
        unpinned = tmp / "known_hosts.unpinned"
        key = fleet.host_key(SERVER)
        unpinned.write_text("".join(line + "\n" for line in fleet.known_hosts_path.read_text().splitlines() if key not in line))
        connection["ssh_known_hosts_file"] = str(unpinned)
    inventory = write_inventory(setup, tmp / f"inventory-{setting}.py", connection)
    names = archives(setup)  # (the operator's borg: one exec on the server, before the count)
    before = {name: fleet.exec_count(name) for name in (CLIENT, SERVER)}
    run = pyinfra(inventory, "deploys/backup.py", "--data", "backup_force=true", env=setup["env"])
    assert run.returncode != 0
    assert f'{SERVER}: ssh_strict_host_key_checking: expected "yes" for a repo server' in run.stdout, run.stdout
    assert ("unset (pyinfra's default: accept-new" in run.stdout) == (setting == "unset")
    served = fleet.run(SERVER, "for key in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $key; done").stdout.split("\n")
    for line in filter(None, served):  # the fingerprint of every key the server has, as ssh-keyscan saw it here
        bits, fingerprint, *_, kind = line.split()
        assert f"ssh-keyscan -p {fleet.host(SERVER).ssh_port} {fleet.host(SERVER).address}: {bits} {fingerprint} " in run.stdout
    assert {name: fleet.exec_count(name) for name in (CLIENT, SERVER)} == before  # no remote command, anywhere
    assert archives(setup) == names


# --- a relayed restore whose stream is cut: nothing in place changes, no marker, the next run restores ---

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


def test_a_relayed_restore_cut_mid_stream_changes_nothing_in_place_and_the_next_run_restores_fully(setup):
    fleet, tmp = setup["fleet"], setup["tmp"]
    wrapper = tmp / "cut-borg"
    wrapper.mkdir()
    (wrapper / "borg").write_text(CUT_BORG)
    (wrapper / "borg").chmod(0o755)
    fleet.run(CLIENT, "mkdir -p /srv/cut/srv/data && echo live > /srv/cut/srv/data/hello.txt")
    before = fleet.run(CLIENT, RESTORE_STATE, check=False).stdout
    restore = ("tasks.relay.restore", "job=system", "target=/srv/cut", "overwrite=true", "--limit", CLIENT)
    path = f"{wrapper}:{os.environ['PATH']}"
    cut = pyinfra(setup["inventory"], *restore, env={**setup["env"], "PATH": path})
    assert cut.returncode != 0
    assert fleet.run(CLIENT, RESTORE_STATE, check=False).stdout == before  # no file, no marker, no stage left
    assert "failed on the operator's machine: Connection closed by remote host; nothing in place changed" in cut.stdout, cut.stdout

    full = pyinfra(setup["inventory"], *restore, env=setup["env"])
    assert full.returncode == 0, full.stdout
    assert "replaced /srv/cut/srv/data/hello.txt" in full.stdout and "on both ends" in full.stdout, full.stdout
    assert tree(fleet, CLIENT, "/srv/cut/srv/data") == tree(fleet, CLIENT, "/srv/data")
    again = pyinfra(setup["inventory"], *restore, "-v", env=setup["env"])
    assert again.returncode == 0 and "already restored" in again.stdout
    assert fleet.run(CLIENT, "ls -A /var/lib/pyinfra-backup/relay").stdout == ""
