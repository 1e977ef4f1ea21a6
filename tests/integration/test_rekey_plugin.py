"""The plugin path of agenix rekey (the one a YubiKey takes), through pyrage's plugin support and a real plugin process.

No YubiKey here: `age-plugin-pbktest` below is a toy plugin speaking the age plugin protocol (recipient-v1 and
identity-v1 over stdin/stdout) with a toy wrap (XOR with a key derived from the recipient). It exercises what
age-plugin-yubikey would: plugin identities in an identity file, plugin recipients in secrets.nix, a plugin
stanza in the header (anonymous to us: the manifest decides), decryption and verification through the plugin.
"""

from __future__ import annotations

import os
import sys

import pyrage
import pytest

from pyinfra_backup.age import parse_header
from pyinfra_backup.agenix import apply_plan, evaluate_rules, load_identities, plan_rekey
from tests.unit.test_agenix import _bech32

PLUGIN = r'''#!{python}
import base64, hashlib, sys

def b64(data): return base64.b64encode(data).decode().rstrip("=")
def unb64(text): return base64.b64decode(text + "=" * (-len(text) % 4))

def read():
    line = sys.stdin.readline()
    if not line:
        sys.exit(1)
    words = line.rstrip("\n").split(" ")[1:]
    body = ""
    while True:
        chunk = sys.stdin.readline().rstrip("\n")
        body += chunk
        if len(chunk) < 64:
            break
    return words[0], words[1:], unb64(body)

def send(command, args=(), body=b""):
    text = b64(body)
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append("")
    sys.stdout.write(" ".join(["->", command, *args]) + "\n" + "\n".join(lines) + "\n")
    sys.stdout.flush()

def secret(bech):  # the data part without its checksum: the same for a recipient and its identity
    return bech.lower().rsplit("1", 1)[1][:-6].encode()

def key(s): return hashlib.sha256(b"key" + s).digest()[:16]
def tag(s): return b64(hashlib.sha256(b"tag" + s).digest()[:4])
def xor(a, b): return bytes(x ^ y for x, y in zip(a, b))

state = sys.argv[1].split("=", 1)[1]
recipients, identities, file_keys, stanzas = [], [], [], []
while True:
    command, args, body = read()
    if command == "done":
        break
    if command in ("add-recipient", "add-identity"):
        (recipients if command == "add-recipient" and state == "recipient-v1" else identities).append(secret(args[0]))
    elif command == "wrap-file-key":
        file_keys.append(body)
    elif command == "recipient-stanza":
        stanzas.append((int(args[0]), args[1], args[2:], body))
if state == "recipient-v1":
    for index, file_key in enumerate(file_keys):
        for s in recipients:
            send("recipient-stanza", [str(index), "pbktest", tag(s)], xor(file_key, key(s)))
            read()
else:
    done = set()
    for index, kind, args, body in stanzas:
        for s in identities:
            if kind == "pbktest" and args == [tag(s)] and index not in done:
                send("file-key", [str(index)], xor(body, key(s)))
                read()
                done.add(index)
send("done")
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """age-plugin-pbktest on PATH; returns (recipient, identity file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "age-plugin-pbktest"
    script.write_text(PLUGIN.replace("{python}", sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    data = os.urandom(16)
    identity = tmp_path / "yubikey-stand-in.txt"
    identity.write_text("# a plugin identity, as age-plugin-yubikey --identity prints\n"
                        + _bech32("age-plugin-pbktest-", data).upper() + "\n")
    return _bech32("age1pbktest", data), identity


def test_a_plugin_recipient_added_then_a_plugin_identity_decrypts(plugin, tmp_path):
    recipient, plugin_identity = plugin
    admin = pyrage.x25519.Identity.generate()
    (tmp_path / "admin.txt").write_text(f"{admin}\n")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    rules_file = secrets / "secrets.nix"
    plain = {"a.age": b"alpha\n", "b.age": b"bravo\n"}
    for name, text in plain.items():
        (secrets / name).write_bytes(pyrage.encrypt(text, [admin.to_public()]))

    rules_file.write_text(f'let admin = "{admin.to_public()}"; yubi = "{recipient}"; in '
                          '{ "a.age".publicKeys = [ admin yubi ]; "b.age".publicKeys = [ admin yubi ]; }')
    plan = plan_rekey(evaluate_rules(rules_file))
    result = apply_plan(plan, load_identities([str(tmp_path / "admin.txt")]))
    assert result.rekeyed == ["a.age", "b.age"]
    for name, text in plain.items():
        data = (secrets / name).read_bytes()
        assert parse_header(data).other_types == ["pbktest"]  # the plugin's stanza, anonymous to us
        only_plugin = load_identities([str(plugin_identity)])
        assert [i.kind for i in only_plugin.items] == ["plugin:pbktest"]
        assert only_plugin.decrypt(data) == text  # the plugin unwraps it
    assert not plan_rekey(evaluate_rules(rules_file)).changes  # the manifest knows the plugin recipient

    # The admin key leaves; only the plugin identity is configured: decryption and verification go through it.
    rules_file.write_text(f'let yubi = "{recipient}"; in '
                          '{ "a.age".publicKeys = [ yubi ]; "b.age".publicKeys = [ yubi ]; }')
    plan = plan_rekey(evaluate_rules(rules_file))
    assert [f.action for f in plan.files] == ["rekey", "rekey"]
    result = apply_plan(plan, load_identities([str(plugin_identity)]))
    assert all(how.startswith("decrypts to the same bytes with") and "(plugin:pbktest)" in how
               for how in result.checks.values())
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt((secrets / "a.age").read_bytes(), [admin])
    assert not plan_rekey(evaluate_rules(rules_file)).changes
