"""pyinfra_backup.age: age headers (rage's and Go age's, with grease), ssh stanza tags, recipient sets, manifest."""

from __future__ import annotations

import base64
import subprocess

import pyrage
import pytest

from pyinfra_backup.age import (
    AgeFormatError, Manifest, ManifestEntry, Recipient, judge_header, parse_header, recipient_set_hash,
    sha256_hex, ssh_key_blob, ssh_tag,
)

MAC = base64.b64encode(b"m" * 32).decode().rstrip("=")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Real keys: ssh-ed25519 and ssh-rsa from ssh-keygen, an X25519 identity from pyrage."""
    root = tmp_path_factory.mktemp("keys")
    out = {}
    for kind, extra in (("ed25519", []), ("rsa", ["-b", "2048"])):
        path = root / f"id_{kind}"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", f"{kind}@test", "-f", str(path)],
                       check=True)
        out[kind] = (path, path.with_suffix(".pub").read_text().strip())
    identity = pyrage.x25519.Identity.generate()
    out["x25519"] = (identity, str(identity.to_public()))
    out["root"] = root
    return out


def _stanza_lines(data: bytes) -> list[str]:
    header = data.split(b"\n---", 1)[0].decode()
    return [line for line in header.splitlines() if line.startswith("-> ")]


def test_tags_match_what_rage_writes(keys):
    ed, rsa, x = keys["ed25519"][1], keys["rsa"][1], keys["x25519"][1]
    recipients = [pyrage.ssh.Recipient.from_str(ed), pyrage.ssh.Recipient.from_str(rsa), pyrage.x25519.Recipient.from_str(x)]
    data = pyrage.encrypt(b"secret", recipients)
    lines = _stanza_lines(data)
    assert f"-> ssh-ed25519 {ssh_tag(ed)} " in "\n".join(lines)
    assert f"-> ssh-rsa {ssh_tag(rsa)}" in lines
    header = parse_header(data)
    assert header.ssh_tags == {("ssh-ed25519", ssh_tag(ed)), ("ssh-rsa", ssh_tag(rsa))}
    assert header.x25519_count == 1
    assert any(s.is_grease for s in header.stanzas)  # rage greases every header
    assert header.other_types == []  # ... and grease is no recipient
    assert not header.armored and data[header.length - 1 : header.length] == b"\n"
    assert data[:header.length].endswith(b"\n") and data[:header.length].split(b"\n")[-2].startswith(b"--- ")


def test_tags_match_what_go_age_writes(keys, tmp_path):
    ed_pub = keys["ed25519"][0].with_suffix(".pub")
    rsa_pub = keys["rsa"][0].with_suffix(".pub")
    out = tmp_path / "go.age"
    subprocess.run(["age", "-R", str(ed_pub), "-R", str(rsa_pub), "-r", keys["x25519"][1], "-a", "-o", str(out)],
                   input=b"hi", check=True)
    header = parse_header(out.read_bytes())
    assert header.armored
    assert header.ssh_tags == {("ssh-ed25519", ssh_tag(keys["ed25519"][1])), ("ssh-rsa", ssh_tag(keys["rsa"][1]))}
    assert header.x25519_count == 1 and not any(s.is_grease for s in header.stanzas)
    rsa = next(s for s in header.stanzas if s.type == "ssh-rsa")
    assert len(rsa.body) == 256  # a multi-line body, read to its short last line


def test_armored_by_rage(keys):
    data = pyrage.encrypt(b"x", [pyrage.x25519.Recipient.from_str(keys["x25519"][1])], armored=True)
    header = parse_header(data)
    assert header.armored and header.x25519_count == 1
    assert parse_header(data.replace(b"\n", b"\r\n")).x25519_count == 1  # CRLF armor
    assert parse_header(b"\n  " + data).armored  # leading whitespace


def _header(*stanzas: str, mac: str = MAC) -> bytes:
    return ("age-encryption.org/v1\n" + "".join(stanzas) + f"--- {mac}\n").encode() + b"payload"


def test_bodies_of_64_columns_end_with_an_empty_line():
    body = base64.b64encode(b"b" * 48).decode()  # exactly 64 characters
    assert len(body) == 64
    header = parse_header(_header(f"-> X25519 abc\n{body}\n\n", "-> piv-p256 TAG1 share\nAAAA\n"))
    assert header.stanzas[0].body == b"b" * 48
    assert header.other_types == ["piv-p256"] and header.x25519_count == 1


@pytest.mark.parametrize("data, reason", [
    (b"hello\n", "not an age v1 file"),
    (b"age-encryption.org/v2\n--- x\n", "not an age v1 file"),
    (b"age-encryption.org/v1\n-> X25519 abc\nAAAA\n", "truncated"),
    (b"age-encryption.org/v1\nbogus\n--- x\n", "expected '-> ' or '--- '"),
    (b"age-encryption.org/v1\n-> X25519  abc\nAAAA\n--- " + MAC.encode() + b"\n", "empty stanza type or argument"),
    (b"age-encryption.org/v1\n-> X25519 abc\n!!!!\n--- " + MAC.encode() + b"\n", "not valid base64"),
    (b"age-encryption.org/v1\n--- AAAA\n", "expected 32 bytes"),
    (b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n", "missing the END line"),
])
def test_malformed_headers(data, reason):
    with pytest.raises(AgeFormatError, match=reason):
        parse_header(data)


def test_recipient_parsing(keys):
    ed = keys["ed25519"][1]
    parsed = Recipient.parse(ed)
    assert parsed.kind == "ssh-ed25519" and parsed.comment == "ed25519@test"
    assert parsed.text == " ".join(ed.split()[:2]) and parsed.tag == ssh_tag(ed)
    assert Recipient.parse(" ".join(ed.split()[:2])) == parsed  # the comment does not matter
    x = keys["x25519"][1]
    assert Recipient.parse(x.upper()) == Recipient.parse(x) == Recipient(x, "X25519")
    yubikey = "age1yubikey1qwt50d05nh5vutpdzmlg5wn80xq5negm4uj9ghv0snvdd3yysf5yw3rhl3t"
    assert Recipient.parse(yubikey).plugin == "yubikey"
    for bad, reason in [
        ("ecdsa-sha2-nistp256 AAAA", "ssh-ed25519 and ssh-rsa keys only"),
        ("ssh-ed25519 " + keys["rsa"][1].split()[1], "not of type ssh-ed25519"),
        (x[:-1] + ("q" if x[-1] != "q" else "p"), "invalid X25519 recipient"),
        (x[:10] + x[10:].upper(), "mixed case"),
        ("hello", "not an age recipient"),
        ("ssh-ed25519", "not an SSH public key line"),
    ]:
        with pytest.raises(ValueError, match=reason):
            Recipient.parse(bad)


def test_recipient_set_hash(keys):
    ed, rsa, x = keys["ed25519"][1], keys["rsa"][1], keys["x25519"][1]
    base = recipient_set_hash([ed, rsa, x])
    assert base.startswith("sha256:") and len(base) == 7 + 64
    assert recipient_set_hash([x, rsa, ed]) == base  # order
    assert recipient_set_hash([" ".join(ed.split()[:2]) + " other comment", rsa, x, x]) == base  # comments, duplicates
    assert recipient_set_hash([ed, rsa]) != base
    assert recipient_set_hash([Recipient.parse(r) for r in (ed, rsa, x)]) == base


def test_ssh_key_blob_is_the_wire_format(keys):
    kind, blob = ssh_key_blob(keys["ed25519"][1])
    assert kind == "ssh-ed25519" and blob[4:15] == b"ssh-ed25519" and len(blob) == 4 + 11 + 4 + 32


def test_judge_header(keys):
    ed, rsa, x = (Recipient.parse(keys[k][1]) for k in ("ed25519", "rsa", "x25519"))
    ssh_only = parse_header(pyrage.encrypt(b"s", [pyrage.ssh.Recipient.from_str(ed.text)]))
    assert judge_header(ssh_only, [ed]).same is True
    added = judge_header(ssh_only, [ed, rsa])
    assert added.same is False and "+ ssh-rsa" in added.reason and "(rsa@test)" in added.reason
    removed = judge_header(ssh_only, [rsa])
    assert removed.same is False and f"- ssh-ed25519 tag {ed.tag}" in removed.reason
    assert judge_header(ssh_only, [ed, x]).same is False  # an X25519 recipient to add: counted
    mixed = parse_header(pyrage.encrypt(b"s", [pyrage.ssh.Recipient.from_str(ed.text), pyrage.x25519.Recipient.from_str(x.text)]))
    assert judge_header(mixed, [ed, x]).same is None  # which X25519 key it is, the header cannot say
    assert judge_header(mixed, [ed]).same is False
    plugin = parse_header(_header("-> piv-p256 TAG1 share\nAAAA\n"))
    assert judge_header(plugin, []).same is None  # a plugin stanza the wanted set does not explain


def test_manifest_claims_are_bound_to_content():
    manifest = Manifest({"a.age": ManifestEntry("11", "sha256:r1")}, {"a.age": ManifestEntry("22", "sha256:r2")})
    assert manifest.recipients_of("a.age", "11") == "sha256:r1"
    assert manifest.recipients_of("a.age", "22") == "sha256:r2"  # pending: the new content of a rekey in progress
    assert manifest.recipients_of("a.age", "33") is None  # edited since: unknown
    assert manifest.recipients_of("b.age", "11") is None
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest and again.to_json() == manifest.to_json()
    assert "pending" not in Manifest({"a.age": ManifestEntry("11", "r")}).to_json()
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("text, reason", [
    ("{", "not valid JSON"),
    ('{"version": 2, "files": {}}', "version 1"),
    ('{"version": 1, "files": []}', "files: expected a mapping"),
    ('{"version": 1, "files": {"a.age": {"sha256": "x"}}}', "files.a.age: expected"),
])
def test_manifest_errors(text, reason):
    with pytest.raises(ValueError, match=reason):
        Manifest.from_json(text, "m.json")
