"""Key and passphrase escrow: what a repo's key looks like to a cheap read, and what is kept of it.

Every job's `borg key export` and passphrase are kept age-encrypted on the operator's machine
(pyinfra_backup/escrow_store.py). Whether the escrow is still current is decided without opening the
repo: the key's *digest* (sha256 of its base64 blob, whitespace removed) is the same whether it is read
from a keyfile, from a local repo's `config` or from `borg key export` output, so the client's one fact
read (facts/borg.py) can compare it with the digest kept beside the escrow:

    >>> export = "BORG_KEY 00ff\\nhqlh YWJj\\nZGVm\\n"
    >>> key_digest(export) == key_digest("BORG_KEY 00ff\\nhqlhYWJjZGVm")
    True
    >>> repo_id_of(export)
    '00ff'
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from collections.abc import Mapping

from pyinfra_backup.borg import Job
from pyinfra_backup.shell import sh_join

KEYFILE_MODES = ("keyfile", "keyfile-blake2")


class EscrowError(Exception):
    """The escrow cannot be read, written or used; the message names the file and what to do."""


def is_keyfile(mode: str) -> bool:
    return mode in KEYFILE_MODES


def repo_id_of(export: str) -> str:
    """The repo id of a `borg key export` (its first line is `BORG_KEY <id>`); ValueError otherwise."""
    first = export.split("\n", 1)[0].split()
    if len(first) != 2 or first[0] != "BORG_KEY" or not all(c in "0123456789abcdef" for c in first[1]):
        raise ValueError("not a borg key export (expected a first line BORG_KEY <repo id>)")
    return first[1]


def key_digest(export: str) -> str:
    """sha256 of the key blob (every line after the first, whitespace removed)."""
    blob = "".join(export.split("\n", 1)[1].split()) if "\n" in export else ""
    return hashlib.sha256(blob.encode()).hexdigest()


def keys_dir(job: Job) -> str:
    """Where borg on the host keeps keyfiles, as a shell word (borg's own order: BORG_KEYS_DIR, BORG_BASE_DIR)."""
    env = job.environment
    if env.get("BORG_KEYS_DIR"):
        return sh_join([env["BORG_KEYS_DIR"]])
    if env.get("BORG_BASE_DIR"):
        return sh_join([env["BORG_BASE_DIR"].rstrip("/") + "/.config/borg/keys"])
    return '"${XDG_CONFIG_HOME:-$HOME/.config}/borg/keys"'


_DIGEST = "tr -d ' \\t\\r\\n' | sha256sum | cut -d' ' -f1"


def keyfile_digests_command(directory: str) -> str:
    """`<repo id> <key digest>` for every borg keyfile in `directory` (a shell word); nothing when there is none."""
    return (f'for f in {directory}/*; do [ -f "$f" ] || continue; read -r magic id < "$f" || continue; '
            f'[ "$magic" = BORG_KEY ] || continue; printf "%s %s\\n" "$id" "$(tail -n +2 "$f" | {_DIGEST})"; done; true')


_CONFIG_KEY = ("awk '/^id = /{id=$3} /^key = /{k=1; sub(/^key = /, \"\"); gsub(/[ \\t\\r]/, \"\"); key=key $0; next} "
               "k && /^[ \\t]/{gsub(/[ \\t\\r]/, \"\"); key=key $0; next} {k=0} END{print id; printf \"%s\", key}'")


def repo_config_digest_command(*repos: str) -> str:
    """`<config> <repo id> <key digest>` of each repokey repo's own config (repo paths on this machine; nothing
    for a repo without a config or a key): one awk and one sha256sum per repo."""
    configs = sh_join([repo.rstrip("/") + "/config" for repo in repos])
    return (f'for config in {configs}; do [ -f "$config" ] || continue; {_CONFIG_KEY} "$config" | '
            '{ read -r id; d=$(sha256sum); [ "${d%% *}" = "$EMPTY" ] || printf "%s %s %s\\n" "$config" "$id" "${d%% *}"; }; '
            'done; true').replace("$EMPTY", hashlib.sha256(b"").hexdigest())


def parse_config_digests(lines: list[str]) -> dict[str, tuple[str, str]]:
    """{repo path: (repo id, key digest)} from `repo_config_digest_command`."""
    found = {}
    for line in lines:
        words = line.rsplit(" ", 2)
        if len(words) == 3 and words[0].endswith("/config"):
            found[words[0][: -len("/config")]] = (words[1], words[2])
    return found


def parse_digests(lines: list[str]) -> dict[str, str]:
    """{repo id: key digest} from the lines of the two commands above."""
    found = {}
    for line in lines:
        words = line.split()
        if len(words) >= 2:
            found[words[-2]] = words[-1]
    return found


def digest_sources(job: Job, local_repo: bool) -> str | None:
    """The command that shows the job's key digest on the host, or None when the host cannot see it
    (a repokey repo on another machine: its key is only in the repo's config there)."""
    if job.mode == "none":
        return None
    if is_keyfile(job.mode):
        return keyfile_digests_command(keys_dir(job))
    if local_repo and job.repo.startswith("/"):
        return repo_config_digest_command(job.repo)
    return None


def export_sections(job: Job, url: str, env: Mapping[str, str]) -> dict[str, str]:
    """The host's part of escrowing a job, one command: the key export and the passphrase, on stdout only."""
    from pyinfra_backup.shell import with_env

    sections = {"key": with_env(env, ["borg", *job.extra_args, "key", "export", url, "-"])}
    if job.pass_command:
        sections["pass"] = job.pass_command
    return sections


@dataclass(frozen=True)
class Kept:
    """What is kept beside a job's escrow (no secret): which repo, which key, for which recipients."""

    repo_id: str
    key_digest: str
    recipients: str  # recipient_set_hash of the recipients the files are encrypted to
    mode: str
    time: str
    passphrase: bool  # whether the passphrase is escrowed too

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Kept":
        data = json.loads(text)
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})


def needs_escrow(kept: Kept | None, recipients: str, seen: Mapping[str, str], visible: bool,
                 recorded_archive: bool, created: bool) -> str | None:
    """Why the job's key and passphrase must be escrowed (again) now, or None when the escrow is current.
    `seen`: the key digests the host showed at the start of the run; `visible`: whether it shows this
    job's key at all; `recorded_archive`: whether the host had an archive on record then (its repo existed);
    `created`: whether a create ran in this run (it may have initialised the repo)."""
    if kept is None:
        return "no escrow yet" if recorded_archive or created else None
    if kept.recipients != recipients:
        return "the escrow recipients changed"
    if visible and seen.get(kept.repo_id) != kept.key_digest:
        return "the repo's key changed" if kept.repo_id in seen else "the escrowed key is not the host's"
    if not recorded_archive and created:
        return "the repo may be new (no archive on record before this run)"
    return None
