"""Key and passphrase escrow on the fleet (issue 18): nothing unrecoverable after a host is lost whole.

A keyfile-mode client (`kf01`) and a repokey client (`rk01`) back up to `backup` with
`borgbackup.escrow.recipients` set: each job's key export and passphrase land age-encrypted on the
operator's machine. Then both hosts are reinstalled in place (same SSH host key; `/root/.config/borg`,
`/root/.cache/borg` and the data gone): kf01 gets its passphrase file back, rk01 does not. One
`deploys/recover.py --limit HOST` run each, with only `borgbackup.escrow.identities` added, brings the data
back; kf01's next backup run works with the key the recover run imported; `borg check` is clean."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess

import pyrage
import pytest

from pyinfra_backup.sheet import paper_key
from tests.fleet import Fleet
from tests.integration.helpers import DATA_SETUP, PROJECT, borg_job, operator_borg, pyinfra, tree

pytestmark = pytest.mark.fleet

KEYFILE, REPOKEY, SERVER = "kf01", "rk01", "backup"
LOST = "rm -rf /root/.config/borg /root/.cache/borg /srv/data"  # a reinstall: borg's key and cache gone, data gone


def _age_identity(path) -> str:
    identity = pyrage.x25519.Identity.generate()
    path.write_text(str(identity) + "\n")
    path.chmod(0o600)
    return str(identity.to_public())


@pytest.fixture(scope="module")
def escrowed(_fleet_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("escrow")
    with Fleet() as fleet:
        fleet.up([KEYFILE, REPOKEY, SERVER])
        yield _scenario(fleet, tmp)


def _scenario(fleet, tmp) -> dict:
    op_key = tmp / "operator_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(op_key)], check=True)
    recipient = _age_identity(tmp / "escrow-identity.txt")
    passes = {KEYFILE: "pp-kf-" + os.urandom(12).hex(), REPOKEY: "pp-rk-" + os.urandom(12).hex()}
    for name, passphrase in passes.items():
        fleet.run(name, f"export PASS={passphrase}\n" + DATA_SETUP)
    escrow = {"recipients": [recipient]}
    mode = {KEYFILE: "keyfile-blake2", REPOKEY: "repokey-blake2"}
    prune = {KEYFILE: {"prune": {"keep": {"daily": 3}}}, REPOKEY: {}}  # kf01's prune: the operator's borg needs the key
    clients = {name: {"borgbackup": {"jobs": {"system": borg_job(SERVER, encryption={
        "mode": mode[name], "passCommand": "cat /root/borg-pass"}, **prune[name])}, "operatorIdentity": str(op_key),
        "escrow": escrow}} for name in passes}
    server = {"borgbackup": {"repos": {}, "operatorKeys": [op_key.with_suffix(".pub").read_text().strip()]}}
    data = {**clients, SERVER: server}
    env = {"BORG_BASE_DIR": str(tmp / "operator-borg")}
    inventory = fleet.write_inventory(tmp / "inventory.py", data)
    runs = {"server": pyinfra(inventory, "deploys/backup_server.py", env=env),
            "backup": pyinfra(inventory, "deploys/backup.py", env=env)}
    before = {name: tree(fleet, name, "/srv/data") for name in passes}
    keyfile = fleet.run(KEYFILE, "cat /root/.config/borg/keys/*").stdout
    counts = {name: fleet.exec_count(name) for name in [*passes, SERVER]}
    runs["noop"] = pyinfra(inventory, "deploys/backup.py", env=env)
    noop_commands = {name: fleet.exec_count(name) - counts[name] for name in [*passes, SERVER]}
    # rk01's key changes on the server (a new passphrase): the next run sees another digest and escrows again.
    old_pass, passes[REPOKEY] = passes[REPOKEY], "pp-rk-new-" + os.urandom(12).hex()
    setup = {"fleet": fleet, "op_key": op_key, "env": {**env, "BORG_NEW_PASSPHRASE": passes[REPOKEY]},
             "pass": {REPOKEY: old_pass}}
    operator_borg(setup, REPOKEY, "key", "change-passphrase", "{repo}")
    fleet.run(REPOKEY, f"printf %s {passes[REPOKEY]} > /root/borg-pass")
    runs["key changed"] = pyinfra(inventory, "deploys/backup.py", env=env)
    shutil.rmtree(tmp / "operator-borg/.config/borg/keys")  # the operator's machine is new too: no key file there
    fleet.run(KEYFILE, LOST)
    fleet.run(REPOKEY, LOST + " /root/borg-pass")
    recovery = {**data, **{name: {**clients[name], "borgbackup": {**clients[name]["borgbackup"], "escrow": {
        **escrow, "identities": [str(tmp / "escrow-identity.txt")]}}} for name in passes}}
    recover_inventory = fleet.write_inventory(tmp / "inventory-recover.py", recovery)
    runs["recover without identities"] = pyinfra(inventory, "deploys/recover.py", "--limit", KEYFILE, env=env)
    for name in passes:
        runs[f"recover {name}"] = pyinfra(recover_inventory, "deploys/recover.py", "--limit", name, env=env)
    runs["after"] = pyinfra(inventory, "deploys/backup.py", "--limit", KEYFILE, "--data", "backup_force=true", env=env)
    for name, run in runs.items():  # for whoever reads a failure
        (tmp / f"run-{name.replace(' ', '-')}.log").write_text(run.stdout)
    return {"fleet": fleet, "tmp": tmp, "env": env, "runs": runs, "before": before, "keyfile": keyfile,
            "passes": passes, "noop_commands": noop_commands, "state": tmp / "operator-borg-state" / "escrow",
            "op_key": op_key}


def test_backup_runs_escrow_every_key_and_passphrase(escrowed):
    backup = escrowed["runs"]["backup"]
    assert backup.returncode == 0, backup.stdout
    assert backup.stdout.count("and passphrase escrowed to 1 recipient(s)") == 2, backup.stdout
    assert "key imported into the operator's borg" in backup.stdout  # so kf01's prune listed its repo here
    for name in (KEYFILE, REPOKEY):
        directory = escrowed["state"] / name
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for kind in ("key.age", "pass.age", "json"):
            assert stat.S_IMODE((directory / f"system.{kind}").stat().st_mode) == 0o600, kind
    identity = pyrage.x25519.Identity.from_str((escrowed["tmp"] / "escrow-identity.txt").read_text().strip())
    export = pyrage.decrypt((escrowed["state"] / KEYFILE / "system.key.age").read_bytes(), [identity]).decode()
    assert export.split() == escrowed["keyfile"].split()  # the key file kf01 had, whole
    for name, passphrase in escrowed["passes"].items():
        assert pyrage.decrypt((escrowed["state"] / name / "system.pass.age").read_bytes(), [identity]) == passphrase.encode()


def test_no_plaintext_in_the_escrow_nor_in_pyinfra_output_and_no_other_identity_decrypts(escrowed):
    secrets = [line.encode() for line in escrowed["keyfile"].split()[2:] if len(line) > 20]
    secrets += [passphrase.encode() for passphrase in escrowed["passes"].values()]
    assert len(secrets) > 3
    files = [path for path in escrowed["state"].rglob("*") if path.is_file()]
    for path in files:
        content = path.read_bytes()
        assert not any(secret in content for secret in secrets), path
    output = "".join(run.stdout for run in escrowed["runs"].values()).encode()
    assert not any(secret in output for secret in secrets)
    other = pyrage.x25519.Identity.generate()
    for path in (p for p in files if p.suffix == ".age"):
        with pytest.raises(pyrage.DecryptError):
            pyrage.decrypt(path.read_bytes(), [other])


def test_a_no_op_run_costs_one_command_per_client_with_escrow(escrowed):
    noop = escrowed["runs"]["noop"]
    assert noop.returncode == 0, noop.stdout
    assert escrowed["noop_commands"] == {KEYFILE: 1, REPOKEY: 1, SERVER: 1}, noop.stdout
    assert "escrow" not in noop.stdout and "] Success" not in noop.stdout, noop.stdout
    assert re.search(rf"\[{KEYFILE}\]\s+No changes", noop.stdout) and re.search(rf"\[{REPOKEY}\]\s+No changes", noop.stdout)


def test_without_the_escrow_identities_recovery_says_what_is_missing_and_changes_nothing(escrowed):
    run = escrowed["runs"]["recover without identities"]
    assert run.returncode != 0
    assert "borgbackup.escrow.identities: needed to decrypt" in run.stdout, run.stdout


def test_a_changed_repokey_key_is_seen_in_the_servers_read_and_escrowed_again(escrowed):
    run, directory = escrowed["runs"]["key changed"], escrowed["state"] / REPOKEY
    assert run.returncode == 0 and f"[{REPOKEY}] system: escrow: the repo's key changed" in " ".join(run.stdout.split()), run.stdout
    identity = pyrage.x25519.Identity.from_str((escrowed["tmp"] / "escrow-identity.txt").read_text().strip())
    assert pyrage.decrypt((directory / "system.pass.age").read_bytes(), [identity]) == escrowed["passes"][REPOKEY].encode()
    [aside] = (directory / "replaced").iterdir()  # the escrow it replaced, kept
    assert sorted(path.name for path in aside.iterdir()) == ["system.json", "system.key.age", "system.pass.age"]
    assert f"{KEYFILE}] system: escrow" not in run.stdout  # kf01's key did not change


def test_keyfile_host_lost_whole_comes_back_with_one_recover_run(escrowed):
    fleet, run = escrowed["fleet"], escrowed["runs"][f"recover {KEYFILE}"]
    assert run.returncode == 0, run.stdout
    assert "escrowed key imported on the host" in run.stdout
    assert (escrowed["tmp"] / "operator-borg/.config/borg/keys").is_dir()  # and into the operator's borg, from the escrow
    assert tree(fleet, KEYFILE, "/srv/data") == escrowed["before"][KEYFILE]
    after = escrowed["runs"]["after"]  # the host's own borg, with the imported key: a new archive
    assert after.returncode == 0 and re.search(rf"\[{KEYFILE}\]\s+Success", after.stdout), after.stdout
    assert operator_borg(_setup(escrowed), KEYFILE, "check", "{repo}").returncode == 0


def test_repokey_host_without_its_passphrase_recovers_from_the_passphrase_escrow(escrowed):
    fleet, run = escrowed["fleet"], escrowed["runs"][f"recover {REPOKEY}"]
    assert run.returncode == 0, run.stdout
    assert fleet.run(REPOKEY, "test -e /root/borg-pass", check=False).returncode != 0  # really recovered without it
    assert tree(fleet, REPOKEY, "/srv/data") == escrowed["before"][REPOKEY]
    assert operator_borg(_setup(escrowed), REPOKEY, "check", "{repo}").returncode == 0


def _setup(escrowed) -> dict:
    return {"fleet": escrowed["fleet"], "op_key": escrowed["op_key"], "env": escrowed["env"], "pass": escrowed["passes"]}


def test_the_recovery_sheet_names_every_repo_key_and_prints_paper_keys_with_the_identity(escrowed):
    env = {**os.environ, "PYINFRA_BACKUP_STATE": str(escrowed["state"].parent)}
    argv = [str(PROJECT / ".venv/bin/python"), "-m", "cli.sheet", str(escrowed["tmp"] / "inventory.py")]
    sheet = subprocess.run(argv, cwd=PROJECT, env=env, capture_output=True, text=True)
    assert sheet.returncode == 0, sheet.stderr
    recipient = pyrage.x25519.Identity.from_str((escrowed["tmp"] / "escrow-identity.txt").read_text().strip()).to_public()
    assert f"{recipient}  (kf01, rk01)" in sheet.stdout and str(escrowed["state"]) in sheet.stdout
    for name in (KEYFILE, REPOKEY):
        kept = json.loads((escrowed["state"] / name / "system.json").read_text())
        assert re.search(rf"{name}\s+system\s+\S+\s+{kept['repo_id'][:16]}\s+{kept['key_digest'][:16]}\s+\S+ \+ passphrase",
                         sheet.stdout), sheet.stdout
    assert "deploys/recover.py --limit HOST" in sheet.stdout and "BORG PAPER KEY" not in sheet.stdout
    paper = subprocess.run([*argv, "--paper", "--identity", str(escrowed["tmp"] / "escrow-identity.txt")],
                           cwd=PROJECT, env=env, capture_output=True, text=True)
    assert paper.returncode == 0 and paper.stdout.count("BORG PAPER KEY v1") == 2, paper.stderr
    assert paper_key(escrowed["keyfile"]) in paper.stdout  # kf01's key file as it was, in borg's paper format
    stranger = escrowed["tmp"] / "stranger.txt"
    _age_identity(stranger)
    refused = subprocess.run([*argv, "--paper", "--identity", str(stranger)], cwd=PROJECT, env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "does not decrypt with" in refused.stderr and not refused.stdout
