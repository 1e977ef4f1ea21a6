"""The age file format as far as rekeying needs it, without any key material.

- `parse_header(data)`: the recipient stanzas of an age file (binary or armored), read from its
  header alone (`age-encryption.org/v1`, `-> TYPE ARGS` + base64 body, `--- MAC`).
- `ssh_tag(key)`: the tag an `ssh-ed25519` / `ssh-rsa` stanza carries: the first 4 bytes of the
  SHA-256 of the SSH wire-format public key, base64 without padding. X25519 stanzas are anonymous.
- `Recipient.parse(text)` / `recipient_set_hash(recipients)`: a recipient list as a stable hash.
- `Manifest`: the sidecar file that records, for each secret, the hash of its recipient set, bound
  to the SHA-256 of the exact file content it describes (see the class for why).

rage (and so pyrage) writes a random "grease" stanza (type `<random>-grease`) into every header;
it stands for no recipient and is ignored here.

>>> ssh_tag("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDdfcEh8NgnivsyQLWZaKdxw2kxRiX+TZ3YtGS41ok/+ me@laptop")
'Cp9ZnA'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

INTRO = b"age-encryption.org/v1"
ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
ARMOR_END = b"-----END AGE ENCRYPTED FILE-----"
SSH_TYPES = ("ssh-ed25519", "ssh-rsa")
X25519 = "X25519"
GREASE_SUFFIX = "-grease"
MAX_HEADER = 1 << 20  # a header larger than this is not one we wrote or can judge


class AgeFormatError(ValueError):
    """Not an age v1 file, or a malformed header; the message says what and where."""


def _b64decode(text: bytes | str, what: str) -> bytes:
    """age's base64: standard alphabet, no padding (padding tolerated)."""
    raw = text.encode() if isinstance(text, str) else text
    raw = raw.rstrip(b"=")
    try:
        return base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise AgeFormatError(f"{what}: not valid base64") from None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


# --- header ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stanza:
    """One `-> TYPE ARGS...` recipient stanza and its body."""

    type: str
    args: tuple[str, ...]
    body: bytes = b""

    @property
    def is_grease(self) -> bool:
        return self.type.endswith(GREASE_SUFFIX)

    @property
    def ssh_tag(self) -> str | None:
        """`(type, tag)`'s tag for ssh-ed25519 / ssh-rsa stanzas, else None."""
        return self.args[0] if self.type in SSH_TYPES and self.args else None


@dataclass(frozen=True)
class Header:
    stanzas: tuple[Stanza, ...]
    mac: bytes
    armored: bool
    length: int  # bytes of the binary header, through the MAC line's newline

    @property
    def ssh_tags(self) -> frozenset[tuple[str, str]]:
        """`{(type, tag)}` of the ssh-ed25519 / ssh-rsa stanzas."""
        return frozenset((s.type, s.ssh_tag) for s in self.stanzas if s.ssh_tag is not None)

    @property
    def x25519_count(self) -> int:
        return sum(1 for s in self.stanzas if s.type == X25519)

    @property
    def other_types(self) -> list[str]:
        """Types of stanzas that are neither ssh, X25519 nor grease (plugins such as `piv-p256`)."""
        return [s.type for s in self.stanzas if s.type not in (*SSH_TYPES, X25519) and not s.is_grease]


def is_armored(data: bytes) -> bool:
    return data.lstrip().startswith(ARMOR_BEGIN)


def dearmor(data: bytes) -> bytes:
    """The binary age file inside an ASCII-armored one (`-----BEGIN AGE ENCRYPTED FILE-----`)."""
    lines = data.strip().replace(b"\r\n", b"\n").split(b"\n")
    if lines[0].strip() != ARMOR_BEGIN:
        raise AgeFormatError("armor: missing the BEGIN line")
    try:
        end = [line.strip() for line in lines].index(ARMOR_END)
    except ValueError:
        raise AgeFormatError("armor: missing the END line") from None
    return _b64decode(b"".join(line.strip() for line in lines[1:end]), "armor")


def parse_header(data: bytes) -> Header:
    """The header of an age v1 file, binary or armored. Raises AgeFormatError."""
    armored = is_armored(data)
    if armored:
        data = dearmor(data)
    if not data.startswith(INTRO + b"\n"):
        raise AgeFormatError("not an age v1 file (no 'age-encryption.org/v1' line)")
    pos = len(INTRO) + 1
    stanzas: list[Stanza] = []

    def line() -> bytes:
        nonlocal pos
        end = data.find(b"\n", pos, pos + MAX_HEADER)
        if end < 0:
            raise AgeFormatError("header: truncated (no MAC line)")
        text, pos = data[pos:end], end + 1
        return text

    while True:
        if pos > MAX_HEADER:
            raise AgeFormatError("header: too large")
        text = line()
        if text.startswith(b"--- "):
            mac = _b64decode(text[4:], "header MAC")
            if len(mac) != 32:
                raise AgeFormatError("header MAC: expected 32 bytes")
            return Header(tuple(stanzas), mac, armored, pos)
        if not text.startswith(b"-> "):
            raise AgeFormatError(f"header: expected '-> ' or '--- ', got {text[:20]!r}")
        try:
            words = text[3:].decode("ascii").split(" ")
        except UnicodeDecodeError:
            raise AgeFormatError("header: a stanza line is not ASCII") from None
        if not words or any(not word for word in words):
            raise AgeFormatError("header: empty stanza type or argument")
        body = b""
        while True:  # body lines are 64 columns; a shorter (maybe empty) line ends it
            chunk = line()
            body += chunk
            if len(chunk) < 64:
                break
        stanzas.append(Stanza(words[0], tuple(words[1:]), _b64decode(body, f"stanza {words[0]}")))


# --- recipients -----------------------------------------------------------------------------------


def ssh_key_blob(key: str) -> tuple[str, bytes]:
    """`(type, wire blob)` of an OpenSSH public key line `type base64 [comment]`."""
    parts = key.strip().split()
    if len(parts) < 2:
        raise ValueError("not an SSH public key line 'type base64 [comment]'")
    kind, data = parts[0], parts[1]
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key data is not valid base64") from None
    if len(blob) < 4:
        raise ValueError("the key data is truncated")
    (size,) = struct.unpack_from(">I", blob)
    if blob[4 : 4 + size] != kind.encode():
        raise ValueError(f"the key data is not of type {kind}")
    return kind, blob


def ssh_tag(key: str) -> str:
    """The stanza tag of an SSH recipient: base64(SHA-256(wire blob)[:4]), unpadded."""
    _, blob = ssh_key_blob(key)
    return _b64encode(hashlib.sha256(blob).digest()[:4])


_X25519 = re.compile(r"age1[02-9ac-hj-np-z]{58}")
_PLUGIN = re.compile(r"age1([a-z0-9.+-]+)1[02-9ac-hj-np-z]+")


@dataclass(frozen=True)
class Recipient:
    """A recipient as secrets.nix lists it, normalised: SSH keys without their comment, age
    recipients in lower case. `kind` is `ssh-ed25519`, `ssh-rsa`, `X25519` or `plugin`."""

    text: str
    kind: str
    tag: str | None = None  # ssh stanza tag
    plugin: str | None = None  # plugin name (`yubikey` for age1yubikey1...)
    comment: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> "Recipient":
        """Raises ValueError with the reason for anything that is not an age or SSH recipient."""
        if not isinstance(text, str):
            raise ValueError("not a string")
        stripped = text.strip()
        kind = stripped.split(" ", 1)[0]
        if kind in SSH_TYPES:
            kind, blob = ssh_key_blob(stripped)
            parts = stripped.split(None, 2)
            normal = f"{kind} {base64.b64encode(blob).decode()}"
            return cls(normal, kind, tag=ssh_tag(normal), comment=parts[2] if len(parts) > 2 else "")
        if kind.startswith(("ssh-", "ecdsa-", "sk-")):
            raise ValueError(f"age supports ssh-ed25519 and ssh-rsa keys only, not {kind}")
        lower = stripped.lower()
        if stripped != lower and stripped != stripped.upper():
            raise ValueError("mixed case bech32")
        if _X25519.fullmatch(lower):
            kind, plugin = X25519, None
        elif match := _PLUGIN.fullmatch(lower):
            kind, plugin = "plugin", match[1]
        else:
            raise ValueError("not an age recipient (age1...) or an ssh-ed25519/ssh-rsa public key")
        _check_bech32(lower, kind)
        return cls(lower, kind, plugin=plugin)

    def short(self) -> str:
        """For messages: type and the end of the key, with its comment when it has one."""
        if self.kind in SSH_TYPES:
            return f"{self.kind} ...{self.text[-8:]}" + (f" ({self.comment})" if self.comment else "")
        return f"{self.text[:12]}...{self.text[-6:]}"


def _check_bech32(text: str, kind: str) -> None:
    """The checksum of an age recipient (a typo in secrets.nix fails here, not half-way through)."""
    import pyrage  # lazy: parsing headers does not need it

    try:
        (pyrage.x25519 if kind == X25519 else pyrage.plugin).Recipient.from_str(text)
    except Exception as error:  # pyrage raises its own RecipientError
        raise ValueError(f"invalid {'X25519' if kind == X25519 else 'plugin'} recipient: {error}") from None


def recipient_set_hash(recipients: Iterable[Recipient | str]) -> str:
    """`sha256:<hex>` of the sorted, de-duplicated normalised recipients: the same for the same set
    in any order, with any comments."""
    texts = sorted({(r if isinstance(r, Recipient) else Recipient.parse(r)).text for r in recipients})
    return "sha256:" + hashlib.sha256("\n".join(texts).encode()).hexdigest()


@dataclass(frozen=True)
class HeaderJudgement:
    """What a file's header alone says about its recipients compared with the wanted ones."""

    same: bool | None  # True/False when the header decides, None when it cannot
    reason: str


def judge_header(header: Header, wanted: Iterable[Recipient]) -> HeaderJudgement:
    """Compare the ssh tags of a header with the wanted recipients. The header decides `same` only
    when every wanted recipient is an SSH key and every stanza (grease aside) an ssh one;
    a difference of ssh tags decides `False` in any case."""
    wanted = list(wanted)
    want_tags = {(r.kind, r.tag) for r in wanted if r.tag}
    have_tags = header.ssh_tags
    added = [r for r in wanted if r.tag and (r.kind, r.tag) not in have_tags]
    removed = sorted(have_tags - want_tags)
    if added or removed:
        parts = [f"+ {r.short()}" for r in added] + [f"- {kind} tag {tag}" for kind, tag in removed]
        return HeaderJudgement(False, "ssh recipients changed: " + ", ".join(parts))
    anonymous = [r for r in wanted if not r.tag]
    if header.x25519_count or header.other_types or anonymous:
        x_want = sum(1 for r in wanted if r.kind == X25519)
        if header.x25519_count != x_want:
            return HeaderJudgement(False, f"X25519 recipients changed: {header.x25519_count} in the file, {x_want} wanted")
        return HeaderJudgement(None, "X25519/plugin recipients are anonymous in the header")
    return HeaderJudgement(True, "the header's ssh tags are the wanted recipients")


# --- manifest -------------------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ManifestEntry:
    sha256: str  # of the whole file, as it is on disk
    recipients: str  # recipient_set_hash of what it is encrypted to

    def to_json(self) -> dict:
        return {"recipients": self.recipients, "sha256": self.sha256}


MANIFEST_COMMENT = (
    "pyinfra-backup agenix rekey manifest (deploys/rekey.py): for each secret, the hash of the recipient set "
    "it is encrypted to, valid only for the file content with that sha256. Commit it with the secrets."
)


@dataclass
class Manifest:
    """`<rules dir>/.rekey-manifest.json`: `{"files": {name: {"sha256", "recipients"}}, "pending": {...}}`.

    X25519 stanzas do not say whom they are for, so the recipient set of a file is recorded here.
    Each claim is bound to the SHA-256 of the file content it describes: "the file whose bytes hash
    to S is encrypted to the set R". A claim is therefore true whatever happened after it was
    written; a file whose content matches no claim (edited with `agenix -e`, or rekeyed by a run
    that crashed before its final manifest) is unknown, judged from its header if it can be, else
    rekeyed. `pending` holds the claims about the new files of a rekey in progress, written before
    the first rename, so that after a crash both the old and the new content of each file are known.
    """

    files: dict[str, ManifestEntry] = field(default_factory=dict)
    pending: dict[str, ManifestEntry] = field(default_factory=dict)

    VERSION = 1

    def recipients_of(self, name: str, sha256: str) -> str | None:
        """The recorded recipient-set hash of secret `name` when its content hashes to `sha256`."""
        for table in (self.files, self.pending):
            entry = table.get(name)
            if entry is not None and entry.sha256 == sha256:
                return entry.recipients
        return None

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> "Manifest":
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ValueError(f"{where}: not valid JSON ({error})") from None
        if not isinstance(data, Mapping) or data.get("version") != cls.VERSION:
            raise ValueError(f"{where}: expected a version {cls.VERSION} rekey manifest")
        tables = {}
        for key in ("files", "pending"):
            table = data.get(key, {})
            if not isinstance(table, Mapping):
                raise ValueError(f"{where}: {key}: expected a mapping")
            entries = {}
            for name, entry in table.items():
                if not (isinstance(entry, Mapping) and isinstance(entry.get("sha256"), str)
                        and isinstance(entry.get("recipients"), str)):
                    raise ValueError(f"{where}: {key}.{name}: expected {{sha256, recipients}}")
                entries[name] = ManifestEntry(entry["sha256"], entry["recipients"])
            tables[key] = entries
        return cls(**tables)

    def to_json(self) -> str:
        data: dict = {"comment": MANIFEST_COMMENT, "version": self.VERSION,
                      "files": {name: e.to_json() for name, e in sorted(self.files.items())}}
        if self.pending:
            data["pending"] = {name: e.to_json() for name, e in sorted(self.pending.items())}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"
