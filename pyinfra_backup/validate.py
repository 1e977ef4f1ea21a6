"""Host data validation: inventory/schema.json plus the checks a schema cannot express.

Every deploy starts with::

    from pyinfra_backup.validate import require_valid_inventory
    require_valid_inventory()

Deploy code runs once per host while pyinfra prepares the run, before anything executes. The first call
validates the data of every host of the inventory (memoised on pyinfra's state); when any host is invalid it
raises InvalidHostData, a PyinfraError: pyinfra's CLI prints its message (one line per problem, no
traceback) and exits 1, and no host is changed.

Messages read ``<host>: <key path>: expected <what>, got <value>``, the key path dotted
(``borgbackup.jobs.system.prune.keep.daily``). The wording of an expectation lives in the schema, next to
the rule, as the ``x-expected`` annotation.

An inventory found valid is remembered by a digest of its data, the schema and this code, under
``$PYINFRA_BACKUP_CACHE/valid`` (default ``~/.cache/pyinfra-backup/valid``): the next run with the same
data skips validation.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import hashlib
import importlib.util
import json
import os
import pwd
import re
import reprlib
import struct
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from pyinfra.api.exceptions import PyinfraError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "inventory" / "schema.json"
_MEMO = "_pyinfra_backup_host_data_errors"  # attribute set on pyinfra's State
_REPORTED = "_pyinfra_backup_host_data_reported"


class InvalidHostData(PyinfraError):
    """Invalid host data; pyinfra's CLI shows the message and exits 1 without a traceback."""


@functools.cache
def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


# --- custom formats: each raises ValueError(reason) for a malformed value ---------------------------

def check_calendar(spec: str) -> None:
    from pyinfra_backup.schedule import parse_calendar  # lazy: schedule is not needed to import this module

    try:
        parse_calendar(spec)
    except ValueError as error:  # drop the spec its message repeats: ours shows it after "got"
        raise ValueError(str(error).removeprefix(f'invalid calendar spec "{spec}": ')) from None


_LEVELS = {"none": None, "lz4": None, "zstd": (1, 22), "zlib": (0, 9), "lzma": (0, 9)}


def check_compression(spec: str) -> None:
    """borg 1.2: [obfuscate,SPEC,][auto,]ALGO[,LEVEL]."""
    parts = spec.split(",")
    if parts[0] == "obfuscate":
        level = parts[1] if len(parts) > 1 else ""
        if not (level.isdigit() and (1 <= int(level) <= 6 or 110 <= int(level) <= 123)):
            raise ValueError("obfuscate needs a level 1-6 or 110-123")
        parts = parts[2:]
    if parts and parts[0] == "auto":
        parts = parts[1:]
        if not parts:
            raise ValueError("auto needs a compression spec after it, e.g. auto,zstd")
    name, *level = parts or [""]
    if name not in _LEVELS:
        raise ValueError(f"unknown algorithm {name!r}")
    bounds = _LEVELS[name]
    if level and (bounds is None or len(level) > 1):
        raise ValueError(f"{name} takes {'no level' if bounds is None else 'one level'}")
    if level and not (level[0].isdigit() and bounds[0] <= int(level[0]) <= bounds[1]):
        raise ValueError(f"{name} level must be {bounds[0]}-{bounds[1]}")


_HOST = r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])"
_USER = r"[^@:/\s]+"
_SSH_URL = re.compile(rf"ssh://(?:{_USER}@)?{_HOST}(?::(?P<port>[0-9]+))?(?P<path>/.*)")
_SCP = re.compile(rf"(?:{_USER}@)?{_HOST}:(?P<path>.+)")


def check_repo(repo: str) -> None:
    """Absolute path, ssh://[user@]host[:port]/path (/./rel, /~/rel) or [user@]host:path."""
    if "::" in re.sub(r"\[[0-9A-Fa-f:.]+\]", "", repo):  # outside an [IPv6] host
        raise ValueError("'::' starts an archive name in borg 1.x; give the repository only")
    if "\n" in repo or repo != repo.strip():
        raise ValueError("leading/trailing whitespace or a newline")
    if repo.startswith("/"):
        return
    if repo.startswith("ssh://"):
        match = _SSH_URL.fullmatch(repo)
        if not match:
            raise ValueError("not an ssh://[user@]host[:port]/path URL")
        if match["port"] and not 0 < int(match["port"]) < 65536:
            raise ValueError(f"port {match['port']} out of range")
        return
    if "://" in repo:
        raise ValueError("only ssh:// URLs are supported")
    if not _SCP.fullmatch(repo):
        raise ValueError("a relative local path or a malformed user@host:path")


_SSH_KEY_TYPES = {
    "ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
}


def check_ssh_public_key(line: str) -> None:
    """One authorized_keys line without options: '<type> <base64 blob> [comment]'."""
    if "\n" in line.strip():
        raise ValueError("one key per item")
    kind, _, rest = line.strip().partition(" ")
    if kind not in _SSH_KEY_TYPES:
        hint = "; give the bare key, pyinfra-backup adds the options" if "=" in kind or "," in kind else ""
        raise ValueError(f"unknown key type {kind[:30]!r}{hint}")
    try:
        blob = base64.b64decode(rest.split(" ", 1)[0], validate=True)
    except binascii.Error:
        raise ValueError("the key data is not valid base64") from None
    fields, offset = [], 0  # the blob is a sequence of length-prefixed fields, the first being the type
    while offset + 4 <= len(blob):
        (size,) = struct.unpack_from(">I", blob, offset)
        fields.append(blob[offset + 4 : offset + 4 + size])
        offset += 4 + size
    if fields[:1] != [kind.encode()]:
        raise ValueError(f"the key data is not of type {kind}")
    if offset != len(blob) or len(fields) < 2:
        raise ValueError("the key data is truncated or mangled")


def check_age_recipient(recipient: str) -> None:
    import pyrage  # lazy: only hosts with system_state.ageRecipients need it

    if recipient.startswith(("ssh-ed25519 ", "ssh-rsa ")):
        return check_ssh_public_key(recipient)
    for kind in (pyrage.x25519, pyrage.plugin):
        try:
            kind.Recipient.from_str(recipient)
            return
        except Exception:  # pyrage raises its own error types
            pass
    raise ValueError("not a valid age recipient")


FORMATS = {
    "systemd-calendar": check_calendar,
    "borg-compression": check_compression,
    "borg-repo": check_repo,
    "ssh-public-key": check_ssh_public_key,
    "age-recipient": check_age_recipient,
}

# --- the validator ----------------------------------------------------------------------------------

def _format(check):
    def accepts(value) -> bool:  # the format check must return True; non-strings are left to "type"
        if isinstance(value, str):
            check(value)
        return True

    return accepts


@functools.cache
def _validator():
    import jsonschema  # lazy: ~60 ms of imports, not needed when the inventory was validated before

    types = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many({
        "array": lambda _, value: isinstance(value, (list, tuple)),
        "object": lambda _, value: isinstance(value, Mapping),
        "integer": lambda _, value: isinstance(value, int) and not isinstance(value, bool),
    })
    checker = jsonschema.FormatChecker(formats=())
    for name, check in FORMATS.items():
        checker.checks(name, raises=ValueError)(_format(check))
    validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=types)
    return validator(load_schema(), format_checker=checker)


# --- messages ---------------------------------------------------------------------------------------

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80
_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
          "array": "a list", "object": "a mapping", "null": "null"}


def _show(value) -> str:
    return _repr.repr(value)


def _resolve(node) -> dict:
    while isinstance(node, dict) and "$ref" in node and "x-expected" not in node:
        node = load_schema()["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node if isinstance(node, dict) else {}


def _expected(error, fallback: str | None = None) -> str:
    if "x-expected" in error.schema or fallback:
        return error.schema.get("x-expected", fallback)
    value = error.validator_value
    if error.validator == "type":
        return " or ".join(_WORDS.get(t, t) for t in ([value] if isinstance(value, str) else value))
    if error.validator == "enum":
        return "one of: " + ", ".join(map(str, value))
    return {"minimum": f"a number >= {value}", "minLength": "a non-empty string",
            "minItems": "a non-empty list"}.get(error.validator, error.message)


def _unknown(key, known) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f", did you mean {close[0]}?" if close else ""
    return f"unknown key (expected one of: {', '.join(known)}){hint}"


def _messages(error, fallback: str | None = None) -> list[tuple[list, str]]:
    """(key path, text) pairs for one jsonschema error; fallback: the expectation of an enclosing anyOf."""
    path = list(error.absolute_path)
    if "propertyNames" in error.absolute_schema_path:  # a bad key, not a bad value
        name = error.instance
        return [(path + [name], f"invalid name: expected {_expected(error)}, got {_show(name)}")]
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        return [(path + [key], _unknown(key, known)) for key in error.instance if key not in known]
    if error.validator == "required":
        properties = error.schema.get("properties", {})
        return [(path + [key], f"missing, expected {_resolve(properties.get(key)).get('x-expected', 'a value')}")
                for key in error.validator_value if key not in error.instance]
    if error.validator in ("anyOf", "oneOf"):
        # When exactly one alternative has the value's type, its errors are the precise ones.
        branches = defaultdict(list)
        for sub in error.context:
            branches[sub.relative_schema_path[0]].append(sub)
        fitting = [subs for subs in branches.values()
                   if not any(sub.validator == "type" and not sub.relative_path for sub in subs)]
        if len(fitting) == 1:
            expected = error.schema.get("x-expected", fallback)
            return [message for sub in fitting[0]
                    for message in _messages(sub, None if sub.relative_path else expected)]
    text = f"expected {_expected(error, fallback)}"
    if error.validator == "format" and error.cause is not None:
        text += f": {error.cause}"
    got = "a value (not shown)" if error.schema.get("x-secret") else _show(error.instance)
    return [(path, f"{text}, got {got}")]


_JOB_NAME = re.compile(load_schema()["$defs"]["jobName"]["pattern"])


def _job_name_errors(path, value, jobs, elsewhere=()) -> list[tuple[list, str]]:
    """`elsewhere`: job names of other hosts, accepted too (a `--data` flag reaches every host)."""
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    out = []
    for name in names:
        if not isinstance(name, str) or not _JOB_NAME.fullmatch(name) or name in jobs or name in elsewhere:
            continue  # the schema reports malformed names
        if path in (["backup_force"], ["backup_force_check"]) and name in ("true", "false"):
            continue
        close = difflib.get_close_matches(name, list(jobs), n=1)
        hint = f", did you mean {close[0]}?" if close else ""
        where = f"one of: {', '.join(jobs)}" if jobs else "the host has no jobs"
        out.append((path, f"expected a job of borgbackup.jobs ({where}), got {_show(name)}{hint}"))
    return out


_TOP_LEVEL_PREFIXES = ("recover_", "backup_")  # namespaces of this project's top-level keys


def _extra_errors(data: Mapping, fleet_jobs: tuple[str, ...] = ()) -> list[tuple[list, str]]:
    """What the schema cannot say: typos of our top-level keys, jobs with nothing to back up, job references."""
    known = list(load_schema()["properties"])
    out = [([key], _unknown(key, known)) for key in data
           if isinstance(key, str) and key not in known
           and (key.startswith(_TOP_LEVEL_PREFIXES) or difflib.get_close_matches(key, known, n=1, cutoff=0.85))]
    borg = data.get("borgbackup")
    jobs = borg.get("jobs") if isinstance(borg, Mapping) else None
    jobs = jobs if isinstance(jobs, Mapping) else {}
    for name, job in jobs.items():
        if isinstance(job, Mapping) and not any(job.get(key) for key in ("paths", "postgresqlDatabases", "volumes")):
            out.append((["borgbackup", "jobs", name], "expected something to back up: paths, postgresqlDatabases "
                        "or volumes (dumpCommand is not used), got none of them"))
        out += _duplicate_errors(["borgbackup", "jobs", name], job)
    state = data.get("system_state")
    if isinstance(state, Mapping) and "job" in state:
        out += _job_name_errors(["system_state", "job"], state["job"], jobs)
    elif isinstance(state, Mapping) and len(jobs) != 1:
        where = f"one of: {', '.join(jobs)}" if jobs else "the host has no jobs"
        out.append((["system_state", "job"], f"missing, expected the job whose repo keeps the state archives ({where})"))
    for key in ("backup_force", "backup_force_check", "recover_jobs"):
        if key in data and not isinstance(data[key], bool):
            out += _job_name_errors([key], data[key], jobs, fleet_jobs if key != "recover_jobs" else ())
    return out


def _duplicate_errors(path, job) -> list[tuple[list, str]]:
    """A database or volume named twice in a job: its dump or its restore would be ambiguous."""
    if not isinstance(job, Mapping):
        return []
    out = []
    for key, name_of in (("postgresqlDatabases", lambda item: item.get("name") if isinstance(item, Mapping) else None),
                         ("volumes", lambda item: item)):
        items = job.get(key)
        seen = set()
        for index, item in enumerate(items if isinstance(items, (list, tuple)) else ()):
            name = name_of(item)
            if isinstance(name, str) and name in seen:
                out.append((path + [key, index], f"expected a name not listed before in {key}, got {_show(name)} again"))
            seen.add(name)
    return out


def _dotted(path) -> str:
    """`borgbackup.jobs.system.paths[0]`; a key with a control character (a line break...) shown quoted, so
    that each problem stays one line."""
    text = ""
    for part in path:
        part = part if isinstance(part, int) or str(part).isprintable() else repr(part)
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def host_data_errors(host_name: str, data: Mapping, fleet_jobs: tuple[str, ...] = ()) -> list[str]:
    """Every problem of one host's data, as '<host>: <key path>: <expected ...>, got <value>' lines.
    `fleet_jobs`: the job names of the whole inventory, which `backup_force` may name on any host."""
    return [f"{host_name}: {line}" for line in _problems(_fingerprint(data, fleet_jobs), data, fleet_jobs)]


def _fingerprint(data: Mapping, fleet_jobs: tuple[str, ...] = ()) -> str:
    """What validation depends on: the names of all top-level keys, the values of the schema's own.
    Hosts of a fleet mostly share their group data: each distinct fingerprint is validated once."""
    known = load_schema()["properties"]
    return json.dumps([sorted(map(str, data)), {k: v for k, v in data.items() if k in known}, fleet_jobs],
                      sort_keys=True, default=repr)


_SEEN: dict[str, list[str]] = {}  # fingerprint -> problems (key path: message)


def _problems(fingerprint: str, data: Mapping, fleet_jobs: tuple[str, ...] = ()) -> list[str]:
    if fingerprint not in _SEEN:
        found = [message for error in _validator().iter_errors(data) for message in _messages(error)]
        found += _extra_errors(data, fleet_jobs)
        lines = (f"{_dotted(path)}: {text}" for path, text in sorted(found, key=lambda f: _dotted(f[0])))
        _SEEN[fingerprint] = list(dict.fromkeys(lines))
    return _SEEN[fingerprint]


def _fleet_data(inventory) -> tuple[dict[str, Mapping], tuple[str, ...]]:
    """Each host's merged data (override, host, groups, all) and the job names of the whole inventory."""
    data = {host.name: host.data.dict() for host in inventory}
    fleet_jobs = tuple(sorted({
        job for values in data.values() if isinstance(values.get("borgbackup"), Mapping)
        and isinstance(values["borgbackup"].get("jobs"), Mapping) for job in values["borgbackup"]["jobs"]
    }))
    return data, fleet_jobs


def inventory_errors(inventory) -> list[str]:
    """Problems of every host of a pyinfra Inventory."""
    data, fleet_jobs = _fleet_data(inventory)
    lines = [line for name, values in data.items() for line in host_data_errors(name, values, fleet_jobs)]
    return lines + _repo_host_errors(data) + _keyfile_errors(data)


def _keyfile_errors(data: Mapping[str, Mapping]) -> list[str]:
    """A keyfile-mode job on a fleet server without `borgbackup.escrow.recipients`: its key would exist only
    on the client, so losing the client would make every archive unreadable (README: Key and passphrase escrow)."""
    from pyinfra_backup.enrollment import find_server

    servers = _repo_servers(data)
    out = []
    for name, values in data.items():
        borg = values.get("borgbackup") if isinstance(values.get("borgbackup"), Mapping) else {}
        escrow = borg.get("escrow") if isinstance(borg.get("escrow"), Mapping) else {}
        for job, spec in _jobs(values) if not escrow.get("recipients") else ():
            mode = (spec.get("encryption") or {}).get("mode") if isinstance(spec.get("encryption"), Mapping) else None
            server = find_server(spec["repo"], servers) if isinstance(spec.get("repo"), str) else None
            if mode in ("keyfile", "keyfile-blake2") and server is not None and server.name != name:
                out.append(f"{name}: {_dotted(['borgbackup', 'jobs', job, 'encryption', 'mode'])}: expected a repokey "
                           f"mode, or borgbackup.escrow.recipients set, got {_show(mode)} without escrow: the key of a "
                           f"keyfile-mode repo exists only on {name}, and if {name} is lost its archives on "
                           f"{server.name} can never be decrypted; set borgbackup.escrow.recipients (age recipients: "
                           "an offline key, a YubiKey) so that the key and passphrase are escrowed")
    return out


def _repo_host_errors(data: Mapping[str, Mapping]) -> list[str]:
    """A job's repo host that is no host of the inventory but close to a repo server's name: a typo, which would
    leave the job out of that server's keys (and revoke them). A repo on a host outside the inventory stays allowed."""
    from pyinfra_backup.enrollment import repo_host

    known = set(data) | {str(values["ssh_hostname"]) for values in data.values() if values.get("ssh_hostname")}
    names = [n for server in _repo_servers(data).values() for n in dict.fromkeys((server.name, server.address))]
    out = []
    for name, values in data.items():
        for job, spec in _jobs(values):
            where = repo_host(spec["repo"]) if isinstance(spec.get("repo"), str) else None
            close = difflib.get_close_matches(where, names, n=1, cutoff=0.8) if where and where not in known else []
            if close:
                out.append(f"{name}: {_dotted(['borgbackup', 'jobs', job, 'repo'])}: expected a host of the inventory "
                           f"or one outside it, got {_show(spec['repo'])}: {where} is no host of the inventory, did you "
                           f"mean {close[0]}?")
    return out


# --- repo servers: the operator's connection must check their host key ------------------------------
# Clients pin a repo server's host keys as read over the operator's pyinfra connection to it, so that
# connection is the root of their trust: pyinfra's default `accept-new` (and `no`/`off`, `ask`) would let
# whichever key answers first be pinned on every client. Never cached: it depends on more than host data.

def _is_repo_server(data: Mapping) -> bool:
    borg = data.get("borgbackup")
    return isinstance(borg, Mapping) and borg.get("repos") is not None


def host_key_checking_problem(name: str, data: Mapping) -> str | None:
    """Why the operator's SSH connection to repo server `name` does not refuse an unknown or changed
    host key, or None when its `ssh_strict_host_key_checking` is "yes" (pyinfra's strict policy).

    >>> host_key_checking_problem("backup", {"borgbackup": {"repos": {}}}).split(", got ")[1][:37]
    "unset (pyinfra's default: accept-new,"
    """
    if not _is_repo_server(data) or data.get("ssh_strict_host_key_checking") == "yes":
        return None
    if "ssh_strict_host_key_checking" not in data:
        got = "unset (pyinfra's default: accept-new, a new key is trusted on first use)"
    else:
        got = _show(data["ssh_strict_host_key_checking"])
    known_hosts = data.get("ssh_known_hosts_file") or "~/.ssh/known_hosts"
    return (f"{name}: ssh_strict_host_key_checking: expected \"yes\" for a repo server (its clients pin the "
            f"host keys read over this connection), got {got}; fix: compare the fingerprint below with the "
            f"server's own out of band (on its console: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), "
            f"pin it in {known_hosts} (ssh_known_hosts_file; this run's connection may already have added "
            f"the key it was offered there, unchecked) and set ssh_strict_host_key_checking=\"yes\"")


def scanned_fingerprints(address: str, port: int) -> list[str]:
    """`ssh-keygen -lf` of the host keys `ssh-keyscan` sees at address:port from this machine, e.g.
    `256 SHA256:... 10.0.0.5 (ED25519)`; [] when nothing answers."""
    try:
        scan = subprocess.run(["ssh-keyscan", "-T", "5", "-p", str(port), "--", address],
                              capture_output=True, text=True, timeout=30)
        listed = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=scan.stdout, capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def untrusted_repo_servers(inventory) -> list[str]:
    """A problem (with what ssh-keyscan sees, indented below it) for every repo server of the inventory
    that pyinfra reaches over SSH without strict host key checking."""
    from pyinfra.connectors.ssh import SSHConnector

    out = []
    for host in inventory:
        if not issubclass(getattr(host, "connector_cls", type(None)), SSHConnector):
            continue  # @local, @docker...: no host key
        data = host.data.dict()
        if problem := host_key_checking_problem(host.name, data):
            address, port = str(data.get("ssh_hostname") or host.name), int(data.get("ssh_port") or 22)
            seen = scanned_fingerprints(address, port) or ["no host key (nothing answered from here)"]
            out.append("\n".join([problem, *(f"    ssh-keyscan -p {port} {address}: {line}" for line in seen)]))
    return out


def unprivileged_logins(state) -> list[str]:
    """A problem for every reached host with `borgbackup` data that pyinfra logs into as a user other than
    root without sudo, su, doas or dzdo for this run: borg, its keys and the project's records there are
    root's. Read from the open connection (no remote command); unreached hosts and other connectors pass."""
    from pyinfra.api.arguments import pop_global_arguments
    from pyinfra.connectors.local import LocalConnector
    from pyinfra.connectors.ssh import SSHConnector

    out = []
    for host in state.inventory:
        connector = getattr(host, "connector", None) if getattr(host, "connected", False) else None
        if connector is None or not isinstance(host.data.get("borgbackup"), Mapping):
            continue
        if isinstance(connector, SSHConnector) and connector.client is not None:
            login = connector.client.get_transport().get_username()
        elif isinstance(connector, LocalConnector):
            login = pwd.getpwuid(os.geteuid()).pw_name
        else:
            continue
        arguments, _ = pop_global_arguments(state, host, {})
        if login == "root" or any(arguments.get(key) for key in ("_sudo", "_su_user", "_doas", "_dzdo")):
            continue
        out.append(f"{host.name}: pyinfra logs in as {login} without sudo: borg, its keys and this project's "
                   f"records on the host are root's; give the host \"_sudo\": True in its data (with passwordless "
                   f"sudo for {login} there) or run pyinfra with --sudo")
    return out


def missing_operator_identities(inventory) -> list[str]:
    """A problem for every job whose prune runs on this machine (a `prune.keep` job on a repo server of the
    inventory) with a `borgbackup.operatorIdentity` this machine cannot read: said before any host changes,
    not days later when prune first has something to delete."""
    from pyinfra_backup.enrollment import find_server, operator_identity

    data = {host.name: host.data.dict() for host in inventory}
    servers = _repo_servers(data)
    out = []
    for name, values in data.items():
        identity = os.path.expanduser(operator_identity(values))
        for job, spec in _jobs(values):
            keep = (spec.get("prune") or {}).get("keep") if isinstance(spec.get("prune"), Mapping) else None
            server = find_server(spec["repo"], servers) if keep and isinstance(spec.get("repo"), str) else None
            if server and server.name != name and not os.access(identity, os.R_OK):
                why = "no such file" if not os.path.exists(identity) else "not readable here"
                out.append(f"{name}: borgbackup.operatorIdentity: prune of job {job} runs on this machine with {identity}: "
                           f"{why} (expected the operator's private key, its public key in {server.name}'s "
                           "borgbackup.operatorKeys)")
    return out


def _repo_servers(data: Mapping[str, Mapping]) -> dict:
    """The inventory's repo servers (hosts with a `borgbackup.repos` mapping), as enrollment sees them."""
    from pyinfra_backup.enrollment import Server

    return {name: Server.from_data(name, values) for name, values in data.items()
            if isinstance(values.get("borgbackup"), Mapping) and isinstance(values["borgbackup"].get("repos"), Mapping)}


def _jobs(values: Mapping) -> list[tuple[str, Mapping]]:
    """A host's jobs that are mappings, by name (malformed ones are the schema's to report)."""
    borg = values.get("borgbackup") if isinstance(values.get("borgbackup"), Mapping) else {}
    jobs = borg.get("jobs") if isinstance(borg.get("jobs"), Mapping) else {}
    return [(job, spec) for job, spec in sorted(jobs.items()) if isinstance(spec, Mapping)]


# --- inventories found valid before -----------------------------------------------------------------
# A run whose host data, schema and validation code are exactly those of an earlier valid run skips the
# validation (and the import of jsonschema, ~60 ms): a marker file named by the digest of all of them.
# Only valid inventories are remembered; a problem is always found and reported afresh.

CACHE_DIR = Path(os.environ.get("PYINFRA_BACKUP_CACHE")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyinfra-backup") / "valid"
_KEEP_MARKERS = 256
_CODE = (Path(__file__), SCHEMA_PATH, Path(__file__).with_name("schedule.py"))
_LIBRARIES = ("jsonschema", "pyrage")


def _inventory_digest(inventory) -> str:
    """Of the validation code, the installed validators and every host's fingerprint (by name)."""
    digest = hashlib.sha256()
    for path in _CODE:
        digest.update(path.read_bytes())
    for name in _LIBRARIES:
        spec = importlib.util.find_spec(name)
        where = spec.origin if spec and spec.origin else "-"
        stat = os.stat(where) if where != "-" else None
        digest.update(f"{where}:{stat and stat.st_mtime_ns}:{stat and stat.st_size}".encode())
    data, fleet_jobs = _fleet_data(inventory)
    for name, values in sorted(data.items()):  # ssh_hostname: repo hosts are checked against the inventory's
        digest.update(f"\0{name}\0{values.get('ssh_hostname')}\0{_fingerprint(values, fleet_jobs)}".encode())
    return digest.hexdigest()


def _remember_valid(digest: str) -> None:
    """Atomically add the marker; keep the newest markers only. A cache that cannot be written is skipped."""
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        temporary = CACHE_DIR / f".{digest}.{os.getpid()}"
        temporary.touch()
        temporary.replace(CACHE_DIR / digest)
        markers = sorted(CACHE_DIR.iterdir(), key=lambda path: path.stat().st_mtime_ns)
        for old in markers[:-_KEEP_MARKERS]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


def require_valid_inventory(state=None) -> None:
    """Stop the run (InvalidHostData) unless every host of the inventory has valid data and every repo
    server is reached with strict host key checking (`untrusted_repo_servers`).

    Call it at the top of every deploy file. The first call of a run validates all hosts and remembers the
    result on the state object, so the other hosts' calls cost nothing. An inventory found valid before,
    with the same code and schema, is not validated again (see CACHE_DIR)."""
    under_cli = state is None
    if state is None:
        from pyinfra.context import ctx_state

        state = ctx_state.get()
        if state is None:
            raise RuntimeError("require_valid_inventory() runs inside a pyinfra deploy (no pyinfra state)")
    errors = getattr(state, _MEMO, None)
    if errors is None:
        digest = _inventory_digest(state.inventory)
        if (CACHE_DIR / digest).exists():
            errors = []
        else:
            errors = inventory_errors(state.inventory)
            if not errors:
                _remember_valid(digest)
        errors = (errors + untrusted_repo_servers(state.inventory) + missing_operator_identities(state.inventory)
                  + unprivileged_logins(state))
        setattr(state, _MEMO, errors)
        if under_cli:
            _name_unreached_hosts_at_exit(state)
    if errors:
        source = _inventory_source() if under_cli else None
        message = (f"invalid host data{f' in {source}' if source else ''} ({len(errors)} problem"
                   f"{'s' * (len(errors) > 1)}), nothing was changed:\n" + "\n".join(errors))
        if under_cli and not getattr(state, _REPORTED, False):
            # One clean block and exit 1: pyinfra's own report would prefix "error in <file> line N". The other
            # hosts' loads (greenlets that may still run while the process exits) raise the plain error, unreported.
            from pyinfra import logger

            setattr(state, _REPORTED, True)
            logger.error(message)
            raise SystemExit(1)
        raise InvalidHostData(message)


def _name_unreached_hosts_at_exit(state) -> None:
    """pyinfra's results table lists only the hosts it reached: say, below it, which ones it did not."""
    unreached = [host.name for host in state.inventory if host in state.failed_hosts and not host.connected]
    if unreached:
        import atexit

        from pyinfra import logger

        atexit.register(logger.error, f"--> Not reached, nothing ran on them (see \"Could not connect\" above): "
                                      f"{', '.join(unreached)}")


def _inventory_source() -> str | None:
    """The inventory as given on pyinfra's command line (parsed again, as pyinfra's CLI parses it)."""
    try:
        from pyinfra_cli.cli import cli

        with cli.make_context("pyinfra", sys.argv[1:], resilient_parsing=True) as context:
            return str(context.params.get("inventory") or "") or None
    except Exception:  # not pyinfra's command line: say nothing rather than something wrong
        return None
