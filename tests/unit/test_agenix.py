"""pyinfra_backup.agenix: rules (real nix-instantiate) and their messages, identities, per-file decisions."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyrage
import pytest

from facts.agenix import AgenixRules
from pyinfra_backup.age import Manifest, ManifestEntry, Recipient, recipient_set_hash, sha256_hex
from pyinfra_backup.agenix import (
    KEEP, MISSING, REKEY, IdentityError, RekeyError, RulesError, Secret, decide, eval_command, evaluate_rules,
    load_identities, openssh_public_key, parse_rules, plan_rekey,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    out = {"root": root}
    for kind, extra in (("ed25519", []), ("rsa", ["-b", "2048"])):
        path = root / f"id_{kind}"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", f"{kind}@test", "-f", str(path)], check=True)
        out[kind] = path
    protected = root / "id_protected"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw", "-f", str(protected)], check=True)
    out["protected"] = protected
    x = pyrage.x25519.Identity.generate()
    (root / "age.txt").write_text(f"# created: today\n# public key: {x.to_public()}\n{x}\n")
    out["x25519"], out["x25519_public"] = root / "age.txt", str(x.to_public())
    return out


def pub(path: Path) -> str:
    return path.with_name(path.name + ".pub").read_text().strip()


# --- rules ------------------------------------------------------------------------------------------


def test_rules_shape_and_paths(keys, tmp_path):
    x = keys["x25519_public"]
    ed = pub(keys["ed25519"])
    rules = parse_rules({"a.age": {"publicKeys": [x, ed, x]}, "sub/b.age": {"publicKeys": [ed], "armor": True}},
                        tmp_path / "secrets" / "secrets.nix", "secrets/secrets.nix")
    a, b = rules.secrets
    assert a.path == tmp_path / "secrets" / "a.age" and b.path == tmp_path / "secrets" / "sub" / "b.age"
    assert [r.kind for r in a.recipients] == ["X25519", "ssh-ed25519"]  # de-duplicated
    assert not a.armor and b.armor
    assert rules.manifest_path == tmp_path / "secrets" / ".rekey-manifest.json"


def test_rules_messages_name_the_file_and_the_attribute(keys):
    x = keys["x25519_public"]
    with pytest.raises(RulesError) as caught:
        parse_rules({
            "empty.age": {"publicKeys": []},
            "none.age": {"armor": True},
            "str.age": {"publicKeys": x},
            "item.age": {"publicKeys": [x, 3, "ssh-ed25519 AAAA", "ecdsa-sha2-nistp256 AAAA"]},
            "armor.age": {"publicKeys": [x], "armor": "yes"},
            "typo.age": {"publicKey": [x]},
            "attr.age": [x],
            "./armor.age": {"publicKeys": [x]},
        }, "/r/secrets.nix", "secrets/secrets.nix")
    lines = str(caught.value).splitlines()
    assert 'secrets/secrets.nix: "empty.age".publicKeys: expected a non-empty list of recipients, got []' in lines
    assert 'secrets/secrets.nix: "none.age".publicKeys: missing, expected a non-empty list of recipients' in lines
    assert any(line.startswith('secrets/secrets.nix: "str.age".publicKeys: expected a non-empty list') for line in lines)
    assert 'secrets/secrets.nix: "item.age".publicKeys[1]: expected a string, got 3' in lines
    assert any(line.startswith('secrets/secrets.nix: "item.age".publicKeys[2]: the key data') for line in lines)
    assert any('"item.age".publicKeys[3]: age supports ssh-ed25519 and ssh-rsa keys only' in line for line in lines)
    assert 'secrets/secrets.nix: "armor.age".armor: expected true or false, got \'yes\'' in lines
    assert 'secrets/secrets.nix: "typo.age".publicKey: unknown attribute (expected publicKeys, armor)' in lines
    assert any(line.startswith('secrets/secrets.nix: "attr.age": expected { publicKeys') for line in lines)
    assert 'secrets/secrets.nix: "./armor.age": the same file as "armor.age"' in lines
    with pytest.raises(RulesError, match=r"^s.nix: expected an attribute set of secrets"):
        parse_rules(["a.age"], "/r/s.nix", "s.nix")


def test_evaluate_real_secrets_nix(keys, tmp_path):
    rules_file = tmp_path / "secrets.nix"
    rules_file.write_text(f"""
let
  operator = "{pub(keys['ed25519'])}";
  backup = "{keys['x25519_public']}";
  all = [ operator backup ];
in {{
  "wifi.age".publicKeys = all;
  "borg.age" = {{ publicKeys = [ operator ]; armor = true; }};
}}
""")
    rules = evaluate_rules(rules_file)
    assert {s.name: len(s.recipients) for s in rules.secrets} == {"wifi.age": 2, "borg.age": 1}
    assert rules.secrets[0].path == tmp_path / rules.secrets[0].name
    rules_file.write_text('{ "a.age".publicKeys = [ ]; }')
    with pytest.raises(RulesError, match=r'secrets.nix": expected|"a.age".publicKeys: expected a non-empty list'):
        evaluate_rules(rules_file)
    rules_file.write_text("{ x = 1")
    with pytest.raises(RulesError) as caught:
        evaluate_rules(rules_file)
    assert str(caught.value).startswith(f"{rules_file}: nix-instantiate failed: error: syntax error")
    assert f"{rules_file}:1:" in str(caught.value)
    with pytest.raises(RulesError, match="no such file"):
        evaluate_rules(tmp_path / "nope.nix")


def test_rules_relative_to_the_working_directory(keys, tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "secrets.nix").write_text(f'{{ "a.age".publicKeys = [ "{keys["x25519_public"]}" ]; }}')
    rules = evaluate_rules("secrets/secrets.nix", base=tmp_path)
    assert rules.shown == "secrets/secrets.nix" and rules.secrets[0].path == tmp_path / "secrets" / "a.age"


def test_fact_runs_one_command_and_reports_problems(keys, tmp_path):
    rules_file = tmp_path / "secrets.nix"
    rules_file.write_text(f'{{ "a.age".publicKeys = [ "{keys["x25519_public"]}" ]; }}')
    fact = AgenixRules()
    command = fact.command(path=str(rules_file), shown="secrets.nix")
    output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()
    state = fact.process(output)
    assert state.error is None and state.rules.secrets[0].name == "a.age"
    rules_file.write_text('{ "a.age".publicKeys = [ "nope" ]; }')
    output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()
    state = fact.process(output)
    assert state.rules is None and state.error.startswith('secrets.nix: "a.age".publicKeys[0]: not an age recipient')
    fact = AgenixRules()
    command = fact.command(path=str(tmp_path / "missing.nix"), shown="missing.nix")
    output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()
    assert fact.process(output).error == f"missing.nix: no such file ({tmp_path / 'missing.nix'})"


def test_nix_writes_only_to_its_temp_dir(tmp_path):
    rules_file = tmp_path / "secrets.nix"
    rules_file.write_text("{ }")
    script = eval_command(str(rules_file)).replace("rm -rf", "ls -A \"$_d\" >&2; rm -rf")
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0 and json.loads(done.stdout) == {}
    assert sorted(os.listdir(tmp_path)) == ["secrets.nix"]  # its temp dir is gone


# --- identities -------------------------------------------------------------------------------------


def test_load_identities(keys):
    ids = load_identities([str(keys["x25519"]), str(keys["ed25519"]), str(keys["rsa"])])
    assert [i.kind for i in ids.items] == ["X25519", "ssh-ed25519", "ssh-rsa"]
    assert ids.publics == {keys["x25519_public"], Recipient.parse(pub(keys["ed25519"])).text,
                           Recipient.parse(pub(keys["rsa"])).text}


def test_public_key_read_from_the_openssh_private_key(keys):
    for kind in ("ed25519", "rsa"):
        assert openssh_public_key(keys[kind].read_bytes()) == " ".join(pub(keys[kind]).split()[:2])
    assert openssh_public_key(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n") is None


def test_identity_errors_name_the_file(keys, tmp_path):
    with pytest.raises(IdentityError, match=r"id_protected: cannot load the SSH private key: .*passphrase-protected"):
        load_identities([str(keys["protected"])])
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("# comment\nhello\n")
    with pytest.raises(IdentityError, match=r"garbage.txt:2: not an age identity"):
        load_identities([str(garbage)])
    with pytest.raises(IdentityError, match=r"nope.txt: cannot read: No such file"):
        load_identities([str(tmp_path / "nope.txt")])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(IdentityError, match=r"empty.txt: no identity in the file"):
        load_identities([str(empty)])
    # A plugin identity whose plugin is missing (bech32 of HRP age-plugin-nothere-).
    plugin = tmp_path / "plugin.txt"
    plugin.write_text(_bech32("age-plugin-nothere-", b"\x01" * 8).upper() + "\n")
    with pytest.raises(IdentityError, match=r"plugin.txt: age-plugin-nothere is not on PATH"):
        load_identities([str(plugin)])


def _bech32(hrp: str, data: bytes) -> str:
    charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
    words, acc, bits = [], 0, 0
    for byte in data:
        acc, bits = (acc << 8) | byte, bits + 8
        while bits >= 5:
            bits -= 5
            words.append((acc >> bits) & 31)
    if bits:
        words.append((acc << (5 - bits)) & 31)

    def polymod(values):
        generator = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
        check = 1
        for value in values:
            top = check >> 25
            check = (check & 0x1FFFFFF) << 5 ^ value
            for i in range(5):
                check ^= generator[i] if (top >> i) & 1 else 0
        return check

    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    mod = polymod(expanded + words + [0] * 6) ^ 1
    checksum = [(mod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(charset[w] for w in words + checksum)


# --- decisions --------------------------------------------------------------------------------------


def _secret(tmp_path, recipients, armor=False, name="a.age") -> Secret:
    parsed = tuple(Recipient.parse(r) for r in recipients)
    return Secret(name, tmp_path / name, parsed, armor)


def _encrypt(recipients, armor=False) -> bytes:
    objects = [pyrage.ssh.Recipient.from_str(r) if r.startswith("ssh-") else pyrage.x25519.Recipient.from_str(r)
               for r in recipients]
    return pyrage.encrypt(b"plain", objects, armored=armor)


def test_decisions(keys, tmp_path):
    ed, rsa, x = pub(keys["ed25519"]), pub(keys["rsa"]), keys["x25519_public"]
    other = str(pyrage.x25519.Identity.generate().to_public())
    empty = Manifest()

    ssh_only = _encrypt([ed])
    status = decide(_secret(tmp_path, [ed]), ssh_only, empty)
    assert (status.action, status.known) == (KEEP, recipient_set_hash([ed]))  # judged from the header alone
    assert "ssh tags" in status.reason
    status = decide(_secret(tmp_path, [ed, rsa]), ssh_only, empty)
    assert status.action == REKEY and "+ ssh-rsa" in status.reason

    mixed = _encrypt([ed, x])
    status = decide(_secret(tmp_path, [ed, x]), mixed, empty)
    assert status.action == REKEY and "not in the manifest" in status.reason and status.known is None
    recorded = Manifest({"a.age": ManifestEntry(sha256_hex(mixed), recipient_set_hash([ed, x]))})
    assert decide(_secret(tmp_path, [ed, x]), mixed, recorded).action == KEEP
    swapped = decide(_secret(tmp_path, [ed, other]), mixed, recorded)  # same count, another X25519 key
    assert swapped.action == REKEY and "differs from the set recorded in the manifest" in swapped.reason
    assert swapped.known == recipient_set_hash([ed, x])  # the old content's set, still true
    stale = Manifest({"a.age": ManifestEntry("0" * 64, recipient_set_hash([ed, x]))})
    assert "changed since the manifest recorded it" in decide(_secret(tmp_path, [ed, x]), mixed, stale).reason
    forced = decide(_secret(tmp_path, [ed, x]), mixed, recorded, force=True)
    assert forced.action == REKEY and forced.reason == "forced (agenix.force)"
    armor = decide(_secret(tmp_path, [ed], armor=True), ssh_only, empty)
    assert armor.action == REKEY and armor.reason == "armor: the file is binary, secrets.nix wants armor"
    assert decide(_secret(tmp_path, [ed], armor=True), _encrypt([ed], armor=True), empty).action == KEEP


def test_plan(keys, tmp_path):
    ed, x = pub(keys["ed25519"]), keys["x25519_public"]
    (tmp_path / "ssh.age").write_bytes(_encrypt([ed]))
    (tmp_path / "mixed.age").write_bytes(_encrypt([ed, x]))
    rules = parse_rules({"ssh.age": {"publicKeys": [ed]}, "mixed.age": {"publicKeys": [ed, x]},
                         "gone.age": {"publicKeys": [ed]}}, tmp_path / "secrets.nix")
    plan = plan_rekey(rules)
    assert {f.secret.name: f.action for f in plan.files} == {"ssh.age": KEEP, "mixed.age": REKEY, "gone.age": MISSING}
    assert plan.changes and "3 secrets: 1 to rekey, 1 unchanged, 1 missing (skipped)" in plan.summary()
    assert plan.lines()[0].startswith("rekey mixed.age: not in the manifest")
    assert plan.lines()[1] == "skip gone.age: no such file (create it with agenix -e)"
    assert "Plan(" in repr(plan) and "b'" not in repr(plan)

    (tmp_path / "mixed.age").unlink()
    plan = plan_rekey(rules)
    assert not plan.rekey and plan.manifest_outdated  # ssh.age's set is known: recorded once
    assert plan.lines() == ["skip mixed.age: no such file (create it with agenix -e)",
                            "skip gone.age: no such file (create it with agenix -e)",
                            "record the recipients of 1 secrets in .rekey-manifest.json"]
    rules.manifest_path.write_text(plan.kept_manifest().to_json())
    assert not plan_rekey(rules).changes

    (tmp_path / "mixed.age").write_bytes(b"not age at all\n")
    with pytest.raises(RekeyError, match=r"nothing was changed: 1 secret\(s\) cannot be read:\n  mixed.age: not an age v1 file"):
        plan_rekey(rules)
    rules.manifest_path.write_text("{")
    with pytest.raises(RekeyError, match=r"not valid JSON .*remove it to rebuild it"):
        plan_rekey(rules)
