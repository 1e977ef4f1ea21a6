"""agenix rekey end to end, with real keys made here: `pyinfra @local deploys/rekey.py` on a temp secrets repo.
(One undecryptable secret: tests/faults.)

Keys: the operator's ssh-ed25519 key and an admin X25519 identity (both configured identities), a host's
ssh-ed25519 key (a recipient only), and a "backup" X25519 identity standing for a backup YubiKey.
"""

from __future__ import annotations

import secrets as random
import signal
import subprocess
import sys
from pathlib import Path

import pyrage
import pytest

from pyinfra_backup.agenix import apply_plan, evaluate_rules, load_identities, plan_rekey
from tests.integration.helpers import PROJECT, pyinfra

RULES = """
let
  operator = "{operator}";
  admin = "{admin}";
  host1 = "{host1}";
  backup = "{backup}";
in {{
  "wifi.age".publicKeys = [ operator host1 {extra} ];
  "borg.age".publicKeys = [ {borg} {extra} ];
  "sub/token.age" = {{ publicKeys = [ admin {extra} ]; armor = true; }};
  "host-only.age".publicKeys = [ host1 {extra_host} ];
}}
"""
FILES = ["borg.age", "host-only.age", "sub/token.age", "wifi.age"]  # nix sorts attribute names


class Repo:
    def __init__(self, root: Path):
        self.root = root
        self.dir = root / "secrets"
        (self.dir / "sub").mkdir(parents=True)
        keys = root / "keys"
        keys.mkdir()
        self.pub = {}
        for name in ("operator", "host1"):
            path = keys / name
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(path)], check=True)
            self.pub[name] = path.with_suffix(".pub").read_text().strip()
        self.identity = {"operator": pyrage.ssh.Identity.from_buffer((keys / "operator").read_bytes()),
                         "host1": pyrage.ssh.Identity.from_buffer((keys / "host1").read_bytes())}
        for name in ("admin", "backup"):
            identity = pyrage.x25519.Identity.generate()
            (keys / f"{name}.txt").write_text(f"# {name}\n{identity}\n")
            self.identity[name] = identity
            self.pub[name] = str(identity.to_public())
        self.identities = [str(keys / "operator"), str(keys / "admin.txt")]
        self.backup_file = keys / "backup.txt"
        self.plain = {name: f"plaintext-{name}-{random.token_hex(8)}\n".encode() for name in FILES}
        self.write_rules()
        # As agenix -e would have made them: Go age for one, rage (pyrage) for the others.
        self.path("wifi.age").write_bytes(b"")
        subprocess.run(["age", "-r", self.pub["operator"], "-r", self.pub["host1"], "-o", str(self.path("wifi.age"))],
                       input=self.plain["wifi.age"], check=True)
        for name, who, armor in (("borg.age", ["admin", "host1"], False), ("sub/token.age", ["admin"], True),
                                 ("host-only.age", ["host1"], False)):
            self.path(name).write_bytes(pyrage.encrypt(self.plain[name], [self.recipient(w) for w in who], armored=armor))
        self.inventory = root / "inventory.py"
        self.inventory.write_text(
            f"hosts = [('@local', {{'agenix': {{'rules': {str(self.dir / 'secrets.nix')!r}, "
            f"'identities': {self.identities!r}}}}})]\n")

    def recipient(self, who: str):
        key = self.pub[who]
        return pyrage.ssh.Recipient.from_str(key) if key.startswith("ssh-") else pyrage.x25519.Recipient.from_str(key)

    def write_rules(self, extra: str = "", extra_host: str = "", borg: str = "admin host1") -> None:
        (self.dir / "secrets.nix").write_text(RULES.format(extra=extra, extra_host=extra_host, borg=borg, **self.pub))

    def path(self, name: str) -> Path:
        return self.dir / name

    def snapshot(self) -> dict[str, bytes]:
        return {p.relative_to(self.dir).as_posix(): p.read_bytes() for p in sorted(self.dir.rglob("*")) if p.is_file()}

    def decrypts(self, name: str, who: str) -> bool:
        try:
            return pyrage.decrypt(self.path(name).read_bytes(), [self.identity[who]]) == self.plain[name]
        except pyrage.DecryptError:
            return False

    def rekey_api(self, **kwargs):
        plan = plan_rekey(evaluate_rules(self.dir / "secrets.nix"), **kwargs)
        return plan, apply_plan(plan, load_identities(self.identities))


@pytest.fixture
def repo(tmp_path):
    """A secrets repo after a first rekey (the manifest now knows the X25519 recipients)."""
    made = Repo(tmp_path)
    plan, result = made.rekey_api()
    assert sorted(result.rekeyed) == ["borg.age", "sub/token.age"]  # anonymous X25519 recipients: rekeyed once
    assert (made.dir / ".rekey-manifest.json").is_file()
    return made


def _no_plaintext(repo: Repo, output: str) -> None:
    for plain in repo.plain.values():
        assert plain.decode().strip() not in output


def test_adding_a_recipient_rekeys_only_the_affected_files(repo):
    before = repo.snapshot()
    repo.write_rules(extra="backup")  # a backup key for every secret the operator can read
    rules_text = (repo.dir / "secrets.nix").read_bytes()

    dry = pyinfra(repo.inventory, "deploys/rekey.py", "--dry", yes=False)
    assert dry.returncode == 0, dry.stdout
    for name in ("wifi.age", "borg.age", "sub/token.age"):
        assert f"rekey {name}: " in dry.stdout
    assert "rekey wifi.age: ssh recipients" not in dry.stdout  # wifi: an X25519 key added, ssh tags the same
    assert "X25519 recipients changed: 0 in the file, 1 wanted" in dry.stdout
    assert "host-only.age" not in dry.stdout
    assert "3 to rekey, 1 unchanged" in dry.stdout
    assert repo.snapshot() == {**before, "secrets.nix": rules_text}  # --dry: nothing written

    run = pyinfra(repo.inventory, "deploys/rekey.py", "-vvv")  # every command and its output shown
    assert run.returncode == 0, run.stdout
    assert "rekeyed 3 secret(s)" in run.stdout
    after = repo.snapshot()
    for name in ("wifi.age", "borg.age", "sub/token.age"):
        assert after[name] != before[name]
        assert repo.decrypts(name, "backup"), name  # the new key reads it, to the same plaintext
    assert repo.decrypts("wifi.age", "operator") and repo.decrypts("borg.age", "admin") and repo.decrypts("borg.age", "host1")
    assert after["host-only.age"] == before["host-only.age"]  # untouched, byte for byte
    assert after["sub/token.age"].startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")  # armor honoured
    assert not after["wifi.age"].startswith(b"-----BEGIN")
    done = subprocess.run(["age", "-d", "-i", str(repo.backup_file), str(repo.path("wifi.age"))], capture_output=True, check=True)
    assert done.stdout == repo.plain["wifi.age"]  # Go age reads what we wrote
    assert not list(repo.dir.rglob("*.rekey.tmp"))

    again = pyinfra(repo.inventory, "deploys/rekey.py")
    assert again.returncode == 0, again.stdout
    assert "No changes" in again.stdout
    assert repo.snapshot() == after
    for output in (dry.stdout, run.stdout, again.stdout):
        _no_plaintext(repo, output)


CRASH = """
import os, signal, sys
from pyinfra_backup.agenix import apply_plan, evaluate_rules, load_identities, plan_rekey
plan = plan_rekey(evaluate_rules(sys.argv[1]))
print("planned", " ".join(f.secret.name for f in plan.rekey), flush=True)
apply_plan(plan, load_identities(sys.argv[2:]), on_replaced=lambda name: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_a_crash_between_two_files_leaves_every_file_decryptable(repo):
    before = repo.snapshot()
    repo.write_rules(extra="backup")
    crashed = subprocess.run([sys.executable, "-c", CRASH, str(repo.dir / "secrets.nix"), *repo.identities],
                             cwd=PROJECT, capture_output=True, text=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    planned = crashed.stdout.split()[1:]
    assert planned == ["borg.age", "sub/token.age", "wifi.age"]
    after = repo.snapshot()
    assert after["borg.age"] != before["borg.age"] and repo.decrypts("borg.age", "backup")  # renamed
    for name in ("sub/token.age", "wifi.age"):
        assert after[name] == before[name] and not repo.decrypts(name, "backup")  # not yet
    for name, who in (("wifi.age", "operator"), ("borg.age", "admin"), ("sub/token.age", "admin"), ("host-only.age", "host1")):
        assert repo.decrypts(name, who), name  # every file decrypts: old or new recipients

    # The manifest knew both contents of each file before the first rename: the next run rekeys only the rest.
    plan, result = repo.rekey_api()
    assert {f.secret.name: f.action for f in plan.files} == {
        "borg.age": "keep", "host-only.age": "keep", "sub/token.age": "rekey", "wifi.age": "rekey"}
    assert result.rekeyed == ["sub/token.age", "wifi.age"]
    assert all(repo.decrypts(name, "backup") for name in planned)
    assert not list(repo.dir.rglob("*.rekey.tmp"))  # the crashed run's temp files are gone
    assert '"pending"' not in (repo.dir / ".rekey-manifest.json").read_text()
    assert not plan_rekey(evaluate_rules(repo.dir / "secrets.nix")).changes


def test_header_only_check_then_force(repo):
    repo.write_rules(borg="host1")  # the admin leaves borg.age: admin decrypts the old file, nobody here reads the new
    plan, result = repo.rekey_api()
    assert result.rekeyed == ["borg.age"]
    assert result.checks["borg.age"].startswith("header checked (no configured identity is among its recipients")
    assert repo.decrypts("borg.age", "host1") and not repo.decrypts("borg.age", "admin")

    before = repo.snapshot()
    repo.identities.append(str(repo.root / "keys" / "host1"))
    plan, result = repo.rekey_api(force=True)
    assert result.rekeyed == FILES and all(f.reason == "forced (agenix.force)" for f in plan.rekey)
    assert all(how.startswith("decrypts to the same bytes") for how in result.checks.values())
    after = repo.snapshot()
    assert all(after[name] != before[name] for name in FILES)
    assert all(repo.decrypts(name, "host1") for name in ("wifi.age", "borg.age", "host-only.age"))
    assert not plan_rekey(evaluate_rules(repo.dir / "secrets.nix")).changes
