"""Offsite copies (3-2-1) on real fleet hosts: a client backs up to the repo server `backup`,
which mirrors its repos with rclone to an sftp account on `vault`, reached with a key whose
passphrase is the secret (`secretCommands.key_file_pass`).

The tests run in file order on one fleet of their own (the repo server's data names only this
file's hosts). They look at the copies on `vault` directly (through the host's root), not through
our own facts.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time

import pytest

from tests.fleet import Fleet
from tests.integration.helpers import ArgvSampler, pyinfra

pytestmark = pytest.mark.fleet

REPO = "/var/lib/borgbackup/host01"
LEGACY = "/srv/legacy-repo"  # a repo of the server's own data, beside the enrolled client's
COPIES = "/srv/vault/borg"
KEY = "/root/.ssh/offsite_ed25519"
SECRET_FILE = "/run/secrets/offsite"


def job():
    return {"paths": ["/srv/data"], "repo": "borg@backup:.", "startAt": "daily",
            "encryption": {"mode": "repokey-blake2", "passCommand": "cat /root/borg-pass"}}


def offsite(fleet, extra_args=(), **options):
    return {
        "type": "sftp", "path": "borg", "backupDir": "borg-deleted", "extraArgs": list(extra_args),
        "options": {"host": fleet.host("vault").address, "user": "vault", "key_file": KEY,
                    "known_hosts_file": "/etc/ssh/ssh_known_hosts", **options},
        "secretCommands": {"key_file_pass": f"cat {SECRET_FILE}"},
    }


@pytest.fixture(scope="module")
def setup(_fleet_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("offsite-fleet")
    fleet = Fleet()
    try:
        fleet.up(["host01", "backup", "vault"])
        yield _prepare(fleet, tmp)
    finally:
        fleet.down()


def prepare_vault(fleet, tmp) -> str:
    """An sftp account `vault` on the host `vault`, reached from `backup` with a key whose passphrase
    (returned) is in backup's SECRET_FILE (0600)."""
    key_pass = "offsite-" + secrets.token_hex(12)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", key_pass, "-C", "offsite@backup", "-f", tmp / "key"],
                   check=True)
    fleet.run("backup", f"install -d -m 0700 /root/.ssh {os.path.dirname(SECRET_FILE)}")
    fleet.run("backup", f"umask 077 && cat > {KEY} && printf '%s\\n' {key_pass} > {SECRET_FILE}",
              input=(tmp / "key").read_text())
    fleet.run("vault", "useradd --create-home --home-dir /srv/vault --shell /bin/sh --password '*' vault && "
                       "install -d -m 0700 -o vault -g vault /srv/vault/.ssh && "
                       "cat > /srv/vault/.ssh/authorized_keys && chown vault: /srv/vault/.ssh/authorized_keys",
              input=(tmp / "key.pub").read_text())
    return key_pass


def _prepare(fleet, tmp) -> dict:
    borg_pass = "pp-" + secrets.token_hex(12)
    fleet.run("host01", f"umask 077 && printf %s {borg_pass} > /root/borg-pass && mkdir -p /srv/data && "
                        "head -c 2000000 /dev/urandom > /srv/data/blob && echo hello > /srv/data/hello")
    key_pass = prepare_vault(fleet, tmp)
    server = {"borgbackup": {"repos": {"legacy": {"path": LEGACY}}, "offsite": offsite(fleet)}}
    groups = {"clients": ["host01"], "servers": ["backup"]}

    def inventory(name, server_data):
        return fleet.write_inventory(tmp / name, {"host01": {"borgbackup": {"jobs": {"system": job()}}},
                                                  "backup": server_data}, groups)

    state = {"fleet": fleet, "tmp": tmp, "borg_pass": borg_pass, "key_pass": key_pass, "inventory": inventory,
             "main": inventory("inventory.py", server)}
    assert pyinfra(state["main"], "deploys/backup_server.py").returncode == 0
    fleet.run("backup", f"runuser -u borg -- borg init --encryption none {LEGACY}")
    with ArgvSampler(fleet, "backup") as sampler:
        state["first"] = pyinfra(state["main"], "deploys/backup.py", "-vvv")
    state["argv"] = sampler.seen
    return state


def copy_of(setup, repo: str):
    return setup["fleet"].path("vault", f"{COPIES}/{repo}")


def files(root) -> dict[str, tuple[int, int, int]]:
    """relative path -> (inode, mtime ns, size) of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            stat = os.stat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return out


def rclone_check(setup, repo: str, path: str):
    """Our own `rclone check` (both ways, sizes and hashes) of the server's repo against its copy on vault."""
    source = setup["fleet"].path("backup", path)
    return subprocess.run(["rclone", "check", str(source), str(copy_of(setup, repo)), "--config", "/dev/null",
                           "--exclude", "/lock.*", "--exclude", "/lock.exclusive/**"], capture_output=True, text=True)


def borg_list_copy(setup):
    env = {**os.environ, "BORG_PASSPHRASE": setup["borg_pass"], "BORG_BASE_DIR": str(setup["tmp"] / "borg-op"),
           "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
    run = subprocess.run(["borg", "list", "--json", str(copy_of(setup, "host01"))], env=env, capture_output=True,
                         text=True, check=True)
    return [archive["name"] for archive in json.loads(run.stdout)["archives"]]


def vault_logins(setup) -> int:
    return int(setup["fleet"].run("vault", "grep -c 'Accepted publickey for vault' /var/log/sshd.log || true").stdout)


def test_first_run_copies_every_repo_and_rclone_check_passes(setup):
    run = setup["first"]
    assert run.returncode == 0, run.stdout[-5000:]
    for repo, path in (("host01", REPO), ("legacy", LEGACY)):
        assert re.search(rf"offsite: repo {repo} -> offsite:borg/{repo}: \d+ files copied .*rclone check: \d+ files match",
                         run.stdout), run.stdout[-5000:]
        check = rclone_check(setup, repo, path)
        assert check.returncode == 0 and "0 differences found" in check.stderr, check.stderr
    assert len(borg_list_copy(setup)) == 1  # the copy is a borg repo, with the client's archive
    record = setup["fleet"].run("backup", "cat /var/lib/pyinfra-backup/offsite/host01").stdout.split()
    repo_files = files(setup["fleet"].path("backup", REPO))
    assert record[3:] == [str(len(repo_files)), str(sum(size for _, _, size in repo_files.values()))]


def test_the_key_passphrase_is_never_in_argv_output_or_files(setup):
    secret, fleet = setup["key_pass"], setup["fleet"]
    assert any(line.startswith("rclone sync ") for line in setup["argv"])  # we did look while rclone ran
    assert any(line.startswith("rclone obscure -") for line in setup["argv"])
    assert not any(secret in line for line in setup["argv"])
    out = setup["first"].stdout
    assert secret not in out
    assert "Loaded fact facts.offsite.OffsiteRepos" in out  # -vvv: facts, commands and their output
    assert not re.search(r"KEY_FILE_PASS=(?!\$_v)", out)  # the obscured secret is only ever a shell variable
    upper = fleet.host("backup").upper
    written = subprocess.run(["grep", "-rlF", "--", secret, str(upper)], capture_output=True, text=True).stdout
    in_tmpfs = fleet.run("backup", f"grep -rlF -- {secret} /tmp /run || true").stdout.split()
    assert written == "" and in_tmpfs == [SECRET_FILE]
    assert fleet.run("backup", f"stat -c %a {SECRET_FILE}").stdout.strip() == "600"


def test_second_run_changes_nothing_and_does_not_contact_the_remote(setup):
    fleet = setup["fleet"]
    before, logins = files(copy_of(setup, "host01")), vault_logins(setup)
    commands = {name: fleet.exec_count(name) for name in ("host01", "backup")}
    run = pyinfra(setup["main"], "deploys/backup.py", "-v")
    assert run.returncode == 0, run.stdout
    assert "] Success" not in run.stdout
    unchanged = r"\[backup\] .*2 repos unchanged since their last verified copy to offsite:borg \(sftp vault@"
    assert re.search(unchanged, run.stdout), run.stdout
    assert files(copy_of(setup, "host01")) == before
    assert vault_logins(setup) == logins  # rclone never ran
    assert fleet.exec_count("backup") - commands["backup"] == 2  # the repo server's fact and the offsite fact
    assert fleet.exec_count("host01") - commands["host01"] == 1  # the client's copy() is a no-op without a command


def test_a_new_archive_copies_only_what_borg_wrote(setup):
    fleet = setup["fleet"]
    before = files(copy_of(setup, "host01"))
    fleet.run("host01", "head -c 500000 /dev/urandom > /srv/data/new")
    time.sleep(1)
    run = pyinfra(setup["main"], "deploys/backup.py", "-v", "--data", "backup_force=true")
    assert run.returncode == 0, run.stdout
    copied = int(re.search(r"offsite: repo host01 -> offsite:borg/host01: (\d+) files copied", run.stdout).group(1))
    after = files(copy_of(setup, "host01"))
    changed = {path for path in after if after[path] != before.get(path)}  # new, or rewritten (nonce, config)
    assert copied == len(changed) and any(path.startswith("data/") for path in set(after) - set(before))
    kept = {path for path in before if path.startswith("data/")}
    assert {path: after[path] for path in kept} == {path: before[path] for path in kept}  # old segments untouched
    assert "legacy" not in re.findall(r"offsite: repo (\S+) ->", run.stdout)  # unchanged, not copied
    assert rclone_check(setup, "host01", REPO).returncode == 0
    assert len(borg_list_copy(setup)) == 2
    superseded = {path for path in set(before) - set(after)}
    assert superseded and all(p.split(".")[0] in ("index", "hints", "integrity") for p in superseded)
    kept_aside = fleet.run("vault", "cd /srv/vault/borg-deleted/host01 && find . -type f -printf '%P\\n'").stdout.split()
    assert {path.split("/", 1)[1] for path in kept_aside} >= superseded  # rclone --backup-dir: nothing lost


def test_an_unreachable_remote_fails_the_server_alone_and_changes_nothing(setup):
    fleet = setup["fleet"]
    refused_once = ["--low-level-retries", "1"]  # rclone's default tries a refused connection 10 times
    wrong = setup["inventory"]("inventory-wrong-port.py", {"borgbackup": {
        "repos": {"legacy": {"path": LEGACY}}, "offsite": offsite(fleet, refused_once, port=2)}})
    records = fleet.run("backup", "cat /var/lib/pyinfra-backup/offsite/*").stdout
    repo, copies = files(fleet.path("backup", REPO)), files(copy_of(setup, "host01"))
    run = pyinfra(wrong, "deploys/backup.py")
    assert run.returncode != 0
    address = fleet.host("vault").address
    assert re.search(rf"\[backup\] backup: borgbackup.offsite \(sftp vault@{re.escape(address)}:2\): repo host01 -> "
                     r"offsite:borg/host01: rclone sync failed: Failed to create file system .*connection refused; "
                     "nothing recorded, the repo is untouched", run.stdout), run.stdout
    assert re.search(r"\[backup\] .*repo legacy -> offsite:borg/legacy: not tried, the remote cannot be reached or logged into", run.stdout)
    assert not re.search(r"\[host01\] .*(Error|failed)", run.stdout), run.stdout
    assert fleet.run("backup", "cat /var/lib/pyinfra-backup/offsite/*").stdout == records
    assert files(fleet.path("backup", REPO)) == repo and files(copy_of(setup, "host01")) == copies
