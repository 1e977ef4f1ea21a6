"""A brand-new fleet enrolled by `deploys/backup.py` alone, as its docstring promises: no
`deploys/backup_server.py` first. The job prunes, so the run's up-front check of the operator's reach
meets a server that this same run gives the operator's key: the check must not fail the prune for it.
The prune's passphrase is read on the operator's side as borg reads it on the host."""

from __future__ import annotations

import json
import secrets
import subprocess

import pytest

from tests.integration.helpers import DATA_SETUP, borg_job, operator_borg, pyinfra

pytestmark = pytest.mark.fleet


def test_first_backup_run_on_a_new_fleet_enrolls_backs_up_and_prunes(fleet_factory, tmp_path):
    fleet = fleet_factory(["host01"], group="clients")
    fleet.add("backup", group="servers")
    op_key = tmp_path / "operator_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(op_key)], check=True)
    passphrase = "pp-" + secrets.token_hex(12)
    fleet.run("host01", f"export PASS={passphrase}\n" + DATA_SETUP)
    # A passphrase file that ends in blank lines (`echo >> file`): borg drops every trailing newline of a
    # passCommand's output, and so must the operator's side, which runs the same passCommand over SSH.
    fleet.run("host01", "printf '\\n\\n' >> /root/borg-pass")
    job = borg_job(prune={"keep": {"daily": 1}})
    host_data = {
        "host01": {"borgbackup": {"jobs": {"system": job}, "operatorIdentity": str(op_key)}},
        "backup": {"borgbackup": {"repos": {}, "operatorKeys": [op_key.with_suffix(".pub").read_text().strip()]}},
    }
    inventory = fleet.write_inventory(tmp_path / "inventory.py", host_data)
    env = {"BORG_BASE_DIR": str(tmp_path / "operator-borg")}

    first = pyinfra(inventory, "deploys/backup.py", env=env)
    assert first.returncode == 0, first.stdout
    assert "Permission denied" not in first.stdout, first.stdout
    # The prune ran, with the operator's key: its listing started the repo's archive ledger, naming the archive.
    ledger = json.loads((tmp_path / "operator-borg-state/ledger/backup/host01.json").read_text())
    setup = {"fleet": fleet, "op_key": op_key, "env": env, "pass": {"host01": passphrase}}
    listing = operator_borg(setup, "host01", "list", "--short", "{repo}")
    assert listing.stdout.split() == list(ledger["archives"]), (listing, ledger)

    second = pyinfra(inventory, "deploys/backup.py", env=env)
    assert second.returncode == 0 and "No changes" in second.stdout and "] Success" not in second.stdout, second.stdout
