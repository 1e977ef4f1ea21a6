"""agenix rekeying without the agenix script: rules, identities, the plan and its all-or-nothing run.

    rules = evaluate_rules("secrets/secrets.nix")            # nix-instantiate --eval --strict --json
    plan = plan_rekey(rules, force=False)                    # reads each secret's header + the manifest
    print("\\n".join(plan.lines()))                          # what would be rekeyed and why
    result = apply_plan(plan, load_identities(["~/.ssh/id_ed25519"]))

What changes, and when (see `apply_plan`):

1. every secret to rekey is decrypted in memory; if ANY fails, nothing is written and the error
   names each file and the reason;
2. each is encrypted to its new recipients (armor as secrets.nix says) and checked: its header
   carries the wanted ssh tags and X25519 count, and it decrypts to the same bytes with a
   configured identity among the new recipients when there is one;
3. every new file is written to a temp file in its own directory and fsynced (a failure here
   removes the temp files: nothing changed);
4. the manifest is written with the claims about the new contents added as `pending`;
5. each temp file is renamed over its secret, and the directory fsynced;
6. the manifest is written again with only the current contents.

A crash anywhere leaves each secret either old (its old recipients, which decrypted it in step 1)
or new (verified in step 2): every file stays decryptable. The manifest's claims are bound to
file hashes (see `pyinfra_backup.age.Manifest`), so they are true at every step: a file whose
content no claim describes is rekeyed again by the next run, which converges.

Plaintext lives only in this process's memory (never argv, a file or a log line). Python cannot
promise to wipe it; the process ends with the run.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hmac
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pyinfra_backup.age import (
    SSH_TYPES, X25519, AgeFormatError, Manifest, ManifestEntry, Recipient, judge_header, parse_header,
    recipient_set_hash, sha256_hex,
)
from pyinfra_backup.shell import sh_join

DEFAULT_RULES = "secrets/secrets.nix"
MANIFEST_NAME = ".rekey-manifest.json"
AGENIX_DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_rsa")  # what agenix uses without -i
TEMP_SUFFIX = ".rekey.tmp"


class RulesError(ValueError):
    """secrets.nix cannot be evaluated or has the wrong shape; one line per problem."""


class IdentityError(ValueError):
    """An identity file cannot be used; the message names the file."""


class RekeyError(RuntimeError):
    """The rekey could not be done; the message says which files, why, and what was changed (usually nothing)."""


# --- rules ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """One entry of secrets.nix: `"<name>".publicKeys = [...]; armor = bool;`."""

    name: str  # the attribute name, a path relative to the rules file's directory
    path: Path  # absolute
    recipients: tuple[Recipient, ...]  # de-duplicated, in the order of secrets.nix
    armor: bool = False

    @property
    def recipients_hash(self) -> str:
        return recipient_set_hash(self.recipients)


@dataclass(frozen=True)
class Rules:
    path: Path  # the rules file, absolute
    secrets: tuple[Secret, ...]
    shown: str = ""  # the path as configured, for messages

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST_NAME


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_rules(value, rules_path: str | os.PathLike, shown: str | None = None) -> Rules:
    """Validate the JSON value of secrets.nix; each problem names the file and the attribute.

    >>> parse_rules({"a.age": {"publicKeys": []}}, "/s/secrets.nix", "secrets.nix")
    Traceback (most recent call last):
    ...
    pyinfra_backup.agenix.RulesError: secrets.nix: "a.age".publicKeys: expected a non-empty list of recipients, got []
    """
    path = Path(rules_path).absolute()
    shown = shown or str(rules_path)
    if not isinstance(value, Mapping):
        raise RulesError(f"{shown}: expected an attribute set of secrets {{\"<file>\".publicKeys = [...];}}, got {_show(value)}")
    problems, secrets, seen = [], [], {}
    for name, entry in value.items():
        where = f'{shown}: "{name}"'
        if not name:
            problems.append(f"{where}: expected a file name")
            continue
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: expected {{ publicKeys = [...]; armor = bool; }}, got {_show(entry)}")
            continue
        for key in entry:
            if key not in ("publicKeys", "armor"):
                problems.append(f"{where}.{key}: unknown attribute (expected publicKeys, armor)")
        keys = entry.get("publicKeys")
        recipients: list[Recipient] = []
        if "publicKeys" not in entry:
            problems.append(f"{where}.publicKeys: missing, expected a non-empty list of recipients")
        elif not isinstance(keys, list) or not keys:
            problems.append(f"{where}.publicKeys: expected a non-empty list of recipients, got {_show(keys)}")
        else:
            for index, key in enumerate(keys):
                if not isinstance(key, str):
                    problems.append(f"{where}.publicKeys[{index}]: expected a string, got {_show(key)}")
                    continue
                try:
                    recipient = Recipient.parse(key)
                except ValueError as error:
                    problems.append(f"{where}.publicKeys[{index}]: {error}, got {_show(key)}")
                    continue
                if recipient not in recipients:
                    recipients.append(recipient)
        armor = entry.get("armor", False)
        if not isinstance(armor, bool):
            problems.append(f"{where}.armor: expected true or false, got {_show(armor)}")
        target = Path(os.path.normpath(path.parent / name))
        if target in seen:
            problems.append(f"{where}: the same file as \"{seen[target]}\"")
        seen.setdefault(target, name)
        if recipients and isinstance(armor, bool):
            secrets.append(Secret(name, target, tuple(recipients), armor))
    if problems:
        raise RulesError("\n".join(problems))
    return Rules(path, tuple(secrets), shown)


_NIX_DIRS = {
    "NIX_STATE_DIR": "state", "NIX_LOG_DIR": "log", "NIX_CONF_DIR": "conf", "XDG_CACHE_HOME": "cache",
    "XDG_CONFIG_HOME": "config", "XDG_DATA_HOME": "data", "XDG_STATE_HOME": "xdg-state",
}


def eval_argv(rules_path: str) -> list[str]:
    """Evaluate secrets.nix to JSON: offline, `--readonly-mode` (no store writes)."""
    return ["nix-instantiate", "--readonly-mode", "--eval", "--strict", "--json", str(rules_path)]


def eval_command(rules_path: str) -> str:
    """A shell command printing secrets.nix as JSON, nix's state/cache in a temp dir it removes."""
    env = " ".join(f'{key}="$_d/{sub}"' for key, sub in _NIX_DIRS.items())
    return (f'_d=$(mktemp -d) || exit 1; {env} {sh_join(eval_argv(rules_path))}; _rc=$?; echo; '
            f'rm -rf "$_d"; exit $_rc')


def nix_error(stderr: str) -> str:
    """nix's error message without its source excerpt: the `error:` line and the `at FILE:L:C` line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    first = next((line for line in lines if line.startswith("error:")), lines[-1] if lines else "no message")
    where = next((line for line in lines if line.startswith("at ") and line.endswith(":")), None)
    return f"{first} ({where[3:-1]})" if where else first


def rules_from_eval(rules_path: str | os.PathLike, rc: int, stdout: str, stderr: str, shown: str | None = None) -> Rules:
    shown = shown or str(rules_path)
    if rc == 127 or "nix-instantiate: not found" in stderr or "nix-instantiate: command not found" in stderr:
        raise RulesError(f"{shown}: nix-instantiate not found (install nix-bin; scripts/install.sh does)")
    if rc != 0:
        raise RulesError(f"{shown}: nix-instantiate failed: {nix_error(stderr)}")
    try:
        value = json.loads(stdout)
    except ValueError as error:
        raise RulesError(f"{shown}: nix-instantiate printed no JSON ({error})") from None
    return parse_rules(value, rules_path, shown)


def resolve_rules_path(rules: str, base: str | os.PathLike | None = None) -> Path:
    """`agenix.rules` as an absolute path: relative to `base` (the working directory, the project root)."""
    path = Path(os.path.expanduser(rules))
    return path if path.is_absolute() else Path(base or os.getcwd()) / path


def evaluate_rules(rules: str | os.PathLike, base: str | os.PathLike | None = None) -> Rules:
    """Evaluate and validate a rules file on this machine."""
    shown = str(rules)
    path = resolve_rules_path(str(rules), base)
    if not path.is_file():
        raise RulesError(f"{shown}: no such file ({path})")
    with tempfile.TemporaryDirectory(prefix="pbk-nix-") as tmp:
        env = {**os.environ, **{key: f"{tmp}/{sub}" for key, sub in _NIX_DIRS.items()}}
        try:
            done = subprocess.run(eval_argv(str(path)), env=env, capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            return rules_from_eval(path, 127, "", "nix-instantiate: not found", shown)
    return rules_from_eval(path, done.returncode, done.stdout, done.stderr, shown)


# --- identities -----------------------------------------------------------------------------------


class PluginCallbacks:
    """What a plugin (age-plugin-yubikey) may ask for. Messages ("touch your YubiKey") go to stderr;
    a PIN is asked on /dev/tty when there is one, else the plugin is told no answer is available."""

    def display_message(self, message: str) -> None:
        print(f"age plugin: {message}", file=sys.stderr, flush=True)

    def confirm(self, message: str, yes_string: str, no_string: str | None) -> bool | None:
        answer = self._ask(f"{message} [{yes_string}/{no_string or ''}] ", secret=False)
        return None if answer is None else answer.strip().lower() in (yes_string.lower(), "y", "yes")

    def request_public_string(self, description: str) -> str | None:
        return self._ask(f"{description}: ", secret=False)

    def request_passphrase(self, description: str) -> str | None:
        return self._ask(f"{description}: ", secret=True)

    @staticmethod
    def _ask(prompt: str, secret: bool) -> str | None:
        try:
            with open("/dev/tty", "r+") as tty:
                if secret:
                    import getpass

                    return getpass.getpass(prompt, stream=tty)
                tty.write(prompt)
                tty.flush()
                return tty.readline().rstrip("\n")
        except OSError:
            return None


@dataclass
class Identity:
    source: str  # the file it came from
    kind: str  # X25519, ssh-ed25519, ssh-rsa, plugin:<name>
    key: object = field(repr=False)  # the pyrage identity
    public: str | None = None  # the normalised recipient it decrypts for, when known

    def describe(self) -> str:
        return f"{self.source} ({self.kind})"


def openssh_public_key(private_pem: bytes) -> str | None:
    """`type base64` of the public key stored in clear inside an OpenSSH private key file."""
    try:
        lines = private_pem.decode().strip().splitlines()
        blob = base64.b64decode("".join(lines[1:-1]))
        magic = b"openssh-key-v1\0"
        if not blob.startswith(magic):
            return None
        pos = len(magic)

        def string() -> bytes:
            nonlocal pos
            (size,) = struct.unpack_from(">I", blob, pos)
            pos += 4 + size
            return blob[pos - size : pos]

        string(), string(), string()  # cipher, kdf, kdf options
        (count,) = struct.unpack_from(">I", blob, pos)
        pos += 4
        if count < 1:
            return None
        public = string()
        (size,) = struct.unpack_from(">I", public)
        kind = public[4 : 4 + size].decode()
        return f"{kind} {base64.b64encode(public).decode()}"
    except (ValueError, struct.error, UnicodeDecodeError, IndexError):
        return None


def _ssh_identity(source: str, path: Path, data: bytes) -> Identity:
    import pyrage

    try:
        key = pyrage.ssh.Identity.from_buffer(data)
    except Exception as error:
        hint = (" (passphrase-protected keys cannot be used unattended: use an unencrypted copy or an age identity)"
                if "decrypted" in str(error) else "")
        raise IdentityError(f"{source}: cannot load the SSH private key: {error}{hint}") from None
    public = openssh_public_key(data)
    if public is None and path.with_name(path.name + ".pub").is_file():
        public = path.with_name(path.name + ".pub").read_text().strip()
    recipient = None
    if public:
        with contextlib.suppress(ValueError):
            recipient = Recipient.parse(public)
    kind = recipient.kind if recipient else "ssh"
    return Identity(source, kind, key, recipient.text if recipient else None)


def load_identities(paths: Iterable[str], callbacks=None) -> "Identities":
    """Load identity files: age identity files (AGE-SECRET-KEY-1..., AGE-PLUGIN-<NAME>-1...;
    # comments), OpenSSH/PEM private keys (ed25519, rsa; unencrypted). Plugin identities need
    `age-plugin-<name>` on PATH. Empty `paths`: agenix's defaults (~/.ssh/id_ed25519, ~/.ssh/id_rsa
    that exist)."""
    import pyrage

    paths = list(paths)
    if not paths:
        paths = [p for p in AGENIX_DEFAULT_IDENTITIES if Path(os.path.expanduser(p)).is_file()]
        if not paths:
            raise IdentityError("agenix.identities: none configured, and neither ~/.ssh/id_ed25519 nor "
                                "~/.ssh/id_rsa exists (agenix's defaults)")
    items: list[Identity] = []
    plugins: dict[str, list] = {}
    plugin_sources: dict[str, list[str]] = {}
    for source in paths:
        path = Path(os.path.expanduser(source))
        try:
            data = path.read_bytes()
        except OSError as error:
            raise IdentityError(f"{source}: cannot read: {error.strerror}") from None
        text = data.lstrip()
        if text.startswith(b"-----BEGIN") and b"PRIVATE KEY-----" in text.split(b"\n", 1)[0]:
            items.append(_ssh_identity(source, path, data))
            continue
        if text.startswith((b"age-encryption.org/", b"-----BEGIN AGE ENCRYPTED FILE-----")):
            raise IdentityError(f"{source}: a passphrase-encrypted identity file cannot be used unattended")
        found = 0
        for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("AGE-SECRET-KEY-1"):
                try:
                    key = pyrage.x25519.Identity.from_str(line)
                except Exception as error:
                    raise IdentityError(f"{source}:{number}: invalid X25519 identity: {error}") from None
                items.append(Identity(source, X25519, key, str(key.to_public())))
            elif line.startswith("AGE-PLUGIN-"):
                try:
                    key = pyrage.plugin.Identity.from_str(line)
                except Exception as error:
                    raise IdentityError(f"{source}:{number}: invalid plugin identity: {error}") from None
                plugins.setdefault(key.plugin(), []).append(key)
                plugin_sources.setdefault(key.plugin(), []).append(source)
            else:
                raise IdentityError(f"{source}:{number}: not an age identity (AGE-SECRET-KEY-1..., "
                                    "AGE-PLUGIN-...) nor an SSH private key")
            found += 1
        if not found:
            raise IdentityError(f"{source}: no identity in the file")
    for name, keys in plugins.items():
        if shutil.which(f"age-plugin-{name}") is None:
            raise IdentityError(f"{', '.join(dict.fromkeys(plugin_sources[name]))}: age-plugin-{name} is not on PATH")
        wrapper = pyrage.plugin.IdentityPluginV1(name, keys, callbacks or PluginCallbacks())
        items.append(Identity(", ".join(dict.fromkeys(plugin_sources[name])), f"plugin:{name}", wrapper))
    return Identities(items)


@dataclass
class Identities:
    items: list[Identity]

    @property
    def publics(self) -> set[str]:
        return {item.public for item in self.items if item.public}

    def describe(self) -> str:
        return ", ".join(item.describe() for item in self.items) or "none"

    def decrypt(self, data: bytes, items: list[Identity] | None = None) -> bytes:
        import pyrage

        return pyrage.decrypt(data, [item.key for item in (self.items if items is None else items)])


# --- planning -------------------------------------------------------------------------------------

REKEY, KEEP, MISSING = "rekey", "keep", "missing"


@dataclass(frozen=True)
class FileStatus:
    secret: Secret
    action: str  # rekey, keep, missing
    reason: str
    sha256: str | None = None  # of the file as read
    known: str | None = None  # the recipient-set hash of the current content when known (for the manifest)


@dataclass
class Plan:
    rules: Rules
    manifest: Manifest  # as read
    manifest_text: str | None  # as read; None when there is none
    files: list[FileStatus]
    force: bool = False

    def __repr__(self) -> str:  # pyinfra may show the command's arguments
        return f"Plan({self.rules.shown}: {len(self.rekey)} to rekey, {len(self.keep)} kept)"

    @property
    def rekey(self) -> list[FileStatus]:
        return [f for f in self.files if f.action == REKEY]

    @property
    def keep(self) -> list[FileStatus]:
        return [f for f in self.files if f.action == KEEP]

    @property
    def missing(self) -> list[FileStatus]:
        return [f for f in self.files if f.action == MISSING]

    def kept_manifest(self) -> Manifest:
        """The manifest if nothing is rekeyed: a claim for each kept file whose recipients are known."""
        return Manifest({f.secret.name: ManifestEntry(f.sha256, f.known) for f in self.keep if f.known})

    @property
    def manifest_outdated(self) -> bool:
        kept = self.kept_manifest()
        if self.manifest_text is None and not kept.files:
            return False  # nothing to record: no manifest is needed
        return kept.to_json() != self.manifest_text

    @property
    def changes(self) -> bool:
        return bool(self.rekey) or self.manifest_outdated

    def summary(self) -> str:
        parts = [f"{len(self.rekey)} to rekey", f"{len(self.keep)} unchanged"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing (skipped)")
        return f"{self.rules.shown}: {len(self.files)} secrets: " + ", ".join(parts)

    def lines(self) -> list[str]:
        """One line per secret to rekey or missing, with the reason."""
        out = [f"rekey {f.secret.name}: {f.reason}" for f in self.rekey]
        out += [f"skip {f.secret.name}: {f.reason}" for f in self.missing]
        if not self.rekey and self.manifest_outdated:
            out.append(f"record the recipients of {len(self.kept_manifest().files)} secrets in {MANIFEST_NAME}")
        return out


def read_manifest(path: Path) -> tuple[Manifest, str | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Manifest(), None
    except OSError as error:
        raise RekeyError(f"{path}: cannot read the manifest: {error.strerror}") from None
    try:
        return Manifest.from_json(text, str(path)), text
    except ValueError as error:
        raise RekeyError(f"{error}; remove it to rebuild it (files with X25519 recipients are then rekeyed once)") from None


def decide(secret: Secret, data: bytes, manifest: Manifest, force: bool = False) -> FileStatus:
    """Whether one secret must be rekeyed, and why. Raises AgeFormatError for a non-age file."""
    sha = sha256_hex(data)
    header = parse_header(data)
    want = secret.recipients_hash
    judged = judge_header(header, secret.recipients)
    recorded = manifest.recipients_of(secret.name, sha)

    def status(action: str, reason: str, known: str | None = None) -> FileStatus:
        return FileStatus(secret, action, reason, sha, known)

    if judged.same is False:
        return status(REKEY, judged.reason, recorded)
    if recorded is not None:
        if recorded != want:
            return status(REKEY, "recipients changed (secrets.nix differs from the set recorded in the manifest)", recorded)
        known, why = recorded, "recipients unchanged (manifest)"
    elif judged.same:
        known, why = want, "recipients unchanged (ssh tags in the header)"
    else:
        stale = " (the file changed since the manifest recorded it)" if secret.name in manifest.files else ""
        return status(REKEY, f"not in the manifest{stale}, and {judged.reason}: rekeyed once to record them")
    if force:
        return status(REKEY, "forced (agenix.force)", known)
    if header.armored != secret.armor:
        return status(REKEY, f"armor: the file is {'armored' if header.armored else 'binary'}, secrets.nix wants "
                             f"{'armor' if secret.armor else 'binary'}", known)
    return status(KEEP, why, known)


def plan_rekey(rules: Rules, force: bool = False) -> Plan:
    """Read the manifest and every secret's header; decide what to rekey. Raises RekeyError naming
    every file that is not an age file or cannot be read."""
    manifest, text = read_manifest(rules.manifest_path)
    files, problems = [], []
    for secret in rules.secrets:
        try:
            data = secret.path.read_bytes()
        except FileNotFoundError:
            files.append(FileStatus(secret, MISSING, "no such file (create it with agenix -e)"))
            continue
        except OSError as error:
            problems.append(f"{secret.name}: cannot read: {error.strerror}")
            continue
        try:
            files.append(decide(secret, data, manifest, force))
        except AgeFormatError as error:
            problems.append(f"{secret.name}: {error}")
    if problems:
        raise RekeyError(f"{rules.shown}: nothing was changed: {len(problems)} secret(s) cannot be read:\n"
                         + "\n".join(f"  {p}" for p in problems))
    return Plan(rules, manifest, text, files, force)


# --- writing --------------------------------------------------------------------------------------


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(target: Path, data: bytes, like: os.stat_result | None = None) -> Path:
    """`data` in a new fsynced temp file next to `target`, with `like`'s mode and owner."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            if like is not None:
                os.fchmod(out.fileno(), like.st_mode & 0o7777)
                if os.geteuid() == 0:
                    os.fchown(out.fileno(), like.st_uid, like.st_gid)
            else:
                os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return Path(name)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Replace `target` atomically: temp file in its directory, fsync, rename, fsync the directory."""
    like = target.stat() if target.exists() else None
    temp = write_temp(target, data, like)
    try:
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def rules_lock(rules: Rules):
    """One rekey at a time per secrets repo: an exclusive flock on the rules file."""
    with open(rules.path, "rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise RekeyError(f"{rules.shown}: another rekey is running (it holds a lock on the rules file)") from None
            raise
        yield


def _stale_temps(rules: Rules) -> list[Path]:
    dirs = {secret.path.parent for secret in rules.secrets}
    return [p for d in dirs if d.is_dir() for p in d.glob(f".*{TEMP_SUFFIX}")]


# --- the run --------------------------------------------------------------------------------------


@dataclass
class RekeyResult:
    rekeyed: list[str]  # secret names, in order
    checks: dict[str, str]  # name -> how the new file was verified
    manifest_written: bool

    def summary(self) -> str:
        if not self.rekeyed:
            return "manifest updated" if self.manifest_written else "nothing to do"
        decrypted = sum(1 for how in self.checks.values() if how.startswith("decrypts"))
        return (f"rekeyed {len(self.rekeyed)} secret(s): {', '.join(self.rekeyed)} "
                f"({decrypted} verified by decryption, {len(self.rekeyed) - decrypted} by header only)")


def _want_counts(secret: Secret) -> tuple[set, int, int]:
    tags = {(r.kind, r.tag) for r in secret.recipients if r.kind in SSH_TYPES}
    x25519 = sum(1 for r in secret.recipients if r.kind == X25519)
    plugins = sum(1 for r in secret.recipients if r.kind == "plugin")
    return tags, x25519, plugins


def verify(secret: Secret, ciphertext: bytes, plaintext: bytes, identities: Identities) -> str:
    """Check a new file before it replaces the old one; returns how it was checked, raises RekeyError."""
    try:
        header = parse_header(ciphertext)
    except AgeFormatError as error:
        raise RekeyError(f"{secret.name}: the new file is not a valid age file: {error}") from None
    tags, x25519, plugins = _want_counts(secret)
    if header.ssh_tags != tags or header.x25519_count != x25519 or len(header.other_types) < plugins:
        raise RekeyError(f"{secret.name}: the new file's header does not match its recipients")
    if header.armored != secret.armor:
        raise RekeyError(f"{secret.name}: the new file's armor is not what secrets.nix says")
    wanted = {r.text for r in secret.recipients}
    holders = [item for item in identities.items if item.public in wanted]
    plugins_ids = [item for item in identities.items if item.kind.startswith("plugin:")]
    if not holders and not (plugins and plugins_ids):
        return "header checked (no configured identity is among its recipients, not decrypted)"
    try:
        again = identities.decrypt(ciphertext, holders or plugins_ids)
    except Exception as error:
        if holders:
            raise RekeyError(f"{secret.name}: the new file does not decrypt with "
                             f"{', '.join(h.describe() for h in holders)}: {error}") from None
        return f"header checked (plugin identities could not decrypt it: {error})"
    if not hmac.compare_digest(again, plaintext):
        raise RekeyError(f"{secret.name}: the new file decrypts to different bytes")
    return f"decrypts to the same bytes with {(holders or plugins_ids)[0].describe()}"


def _encrypt(secret: Secret, plaintext: bytes, callbacks) -> bytes:
    return encrypt_to(plaintext, secret.recipients, secret.armor, callbacks, what=secret.name)


def encrypt_to(plaintext: bytes, recipients: Iterable[Recipient], armored: bool = False, callbacks=None,
               what: str = "age") -> bytes:
    """Encrypt in memory to age/SSH/plugin recipients (`Recipient.parse`d); plugin recipients need
    `age-plugin-<name>` on PATH (RekeyError naming `what` otherwise)."""
    import pyrage

    native, plugin_groups = [], {}
    for r in recipients:
        if r.kind in SSH_TYPES:
            native.append(pyrage.ssh.Recipient.from_str(r.text))
        elif r.kind == X25519:
            native.append(pyrage.x25519.Recipient.from_str(r.text))
        else:
            plugin_groups.setdefault(r.plugin, []).append(pyrage.plugin.Recipient.from_str(r.text))
    for name, group in plugin_groups.items():
        if shutil.which(f"age-plugin-{name}") is None:
            raise RekeyError(f"{what}: age-plugin-{name} is not on PATH (needed to encrypt to {group[0]})")
        native.append(pyrage.plugin.RecipientPluginV1(name, group, [], callbacks or PluginCallbacks()))
    return pyrage.encrypt(plaintext, native, armored=armored)


def apply_plan(plan: Plan, identities: Identities | None = None, *, callbacks=None,
               on_replaced: Callable[[str], None] | None = None) -> RekeyResult:
    """Rekey the plan's files all or nothing (see the module's docstring for the order of writes).
    `on_replaced(name)` is called after each secret's rename (tests simulate a crash there)."""
    rules = plan.rules
    todo = plan.rekey
    if not todo:
        if plan.manifest_outdated:
            atomic_write_bytes(rules.manifest_path, plan.kept_manifest().to_json().encode())
            return RekeyResult([], {}, True)
        return RekeyResult([], {}, False)
    if identities is None:
        raise RekeyError("no identities to decrypt with")
    with rules_lock(rules):
        for temp in _stale_temps(rules):  # left by a crashed run: ciphertext only
            temp.unlink(missing_ok=True)
        # 1. read again (the same bytes as planned) and decrypt everything first
        ciphertexts, failures = {}, []
        for status in todo:
            try:
                data = status.secret.path.read_bytes()
            except OSError as error:
                failures.append(f"{status.secret.name}: cannot read: {error.strerror}")
                continue
            if sha256_hex(data) != status.sha256:
                failures.append(f"{status.secret.name}: changed since it was read; run again")
                continue
            ciphertexts[status.secret.name] = data
        plaintexts = {}
        for status in todo:
            name = status.secret.name
            if name not in ciphertexts:
                continue
            try:
                plaintexts[name] = identities.decrypt(ciphertexts[name])
            except Exception as error:  # pyrage.DecryptError and the plugins' errors
                failures.append(f"{name}: cannot decrypt: {error}")
        if failures:
            raise RekeyError(
                f"{rules.shown}: nothing was changed: {len(failures)} of {len(todo)} secret(s) to rekey failed "
                f"(identities: {identities.describe()}):\n" + "\n".join(f"  {f}" for f in failures))
        # 2. encrypt to the new recipients and check
        new, checks = {}, {}
        for status in todo:
            secret = status.secret
            try:
                new[secret.name] = _encrypt(secret, plaintexts[secret.name], callbacks)
            except RekeyError as error:
                raise RekeyError(f"{rules.shown}: nothing was changed: {error}") from None
            except Exception as error:
                raise RekeyError(f"{rules.shown}: nothing was changed: {secret.name}: cannot encrypt: {error}") from None
            try:
                checks[secret.name] = verify(secret, new[secret.name], plaintexts[secret.name], identities)
            except RekeyError as error:
                raise RekeyError(f"{rules.shown}: nothing was changed: {error}") from None
        plaintexts.clear()
        # 3. every new file in a temp file next to its secret
        temps: dict[str, Path] = {}
        try:
            for status in todo:
                temps[status.secret.name] = write_temp(status.secret.path, new[status.secret.name], status.secret.path.stat())
        except OSError as error:
            for temp in temps.values():
                temp.unlink(missing_ok=True)
            raise RekeyError(f"{rules.shown}: nothing was changed: cannot write next to {status.secret.name}: "
                             f"{error.strerror}") from None
        # 4. the manifest knows the old and the new content of each file before any rename
        final = plan.kept_manifest()
        for status in todo:
            final.files[status.secret.name] = ManifestEntry(sha256_hex(new[status.secret.name]), status.secret.recipients_hash)
        pending = Manifest(
            {f.secret.name: ManifestEntry(f.sha256, f.known) for f in plan.files if f.known and f.sha256},
            {f.secret.name: final.files[f.secret.name] for f in todo},
        )
        try:
            atomic_write_bytes(rules.manifest_path, pending.to_json().encode())
        except OSError as error:
            for temp in temps.values():
                temp.unlink(missing_ok=True)
            raise RekeyError(f"{rules.shown}: nothing was changed: cannot write {rules.manifest_path}: {error.strerror}") from None
        # 5. the renames: each file is old or new, both decryptable
        done: list[str] = []
        for status in todo:
            name = status.secret.name
            try:
                os.replace(temps[name], status.secret.path)
                fsync_dir(status.secret.path.parent)
            except OSError as error:
                for temp in temps.values():
                    temp.unlink(missing_ok=True)
                raise RekeyError(
                    f"{rules.shown}: {name}: cannot replace: {error.strerror}; rekeyed before it: "
                    f"{', '.join(done) or 'none'}; every file still decrypts (old or new recipients); run again"
                ) from None
            done.append(name)
            if on_replaced is not None:
                on_replaced(name)
        # 6. the manifest of the current contents only
        atomic_write_bytes(rules.manifest_path, final.to_json().encode())
        return RekeyResult(done, checks, True)
