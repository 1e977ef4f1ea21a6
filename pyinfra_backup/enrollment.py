"""Who backs up where: the fleet's repo servers, each client's repos on them, and the keys.

A job whose `repo` names a host of the inventory that has `borgbackup.repos`
(by inventory name or `ssh_hostname`) is *enrolled*: its repo on that server is
`borgbackup.repos.<client>`, reached with the client's dedicated append-only key.
Everything here is pure: callers pass plain host data.

>>> servers = {"backup": Server.from_data("backup", {"ssh_hostname": "10.0.0.2",
...            "borgbackup": {"repos": {}}})}
>>> find_server("borg@backup:.", servers).name
'backup'
>>> client_location(servers["backup"], "host01").url
'borg@10.0.0.2:.'
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
from dataclasses import dataclass
from collections.abc import Mapping

from pyinfra_backup.borg import BACKUP_KEY, KNOWN_HOSTS, SERVER_ALIVE_INTERVAL, Job, Location, ssh_rsh

REPO_BASE = "/var/lib/borgbackup"
OPERATOR_IDENTITY = "~/.ssh/id_ed25519"  # `borgbackup.operatorIdentity` unless the host's data says otherwise


def operator_identity(data: Mapping) -> str:
    """The private key (on the operator's machine) with which operator-side borg reaches this host's fleet repos."""
    borg = data.get("borgbackup") if isinstance(data.get("borgbackup"), Mapping) else {}
    return str(borg.get("operatorIdentity") or OPERATOR_IDENTITY)
SSH_URL = re.compile(r"^ssh://(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d+))?(?P<path>/.*)$")
SCP_URL = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>\[[^\]]+\]|[^:/]+):(?P<path>.*)$")


def repo_host(repo: str) -> str | None:
    """The host part of an ssh or scp-style repo URL, None for a local path."""
    match = SSH_URL.match(repo) or (None if repo.startswith("/") else SCP_URL.match(repo))
    return match.group("host").strip("[]") if match else None


@dataclass(frozen=True)
class Server:
    """A host of the inventory with `borgbackup.repos`."""

    name: str
    address: str
    port: int
    repos: Mapping[str, Mapping]
    operator_keys: tuple[str, ...]

    @classmethod
    def from_data(cls, name: str, data: Mapping) -> "Server":
        borg = data.get("borgbackup") or {}
        return cls(
            name=name,
            address=data.get("ssh_hostname") or name,
            port=int(data.get("ssh_port") or 22),
            repos=borg.get("repos") or {},
            operator_keys=tuple(borg.get("operatorKeys") or ()),
        )

    def repo_for(self, client: str) -> dict:
        """The server's repo for an enrolled client: its own entry, or the default one."""
        return {"path": f"{REPO_BASE}/{client}", "user": "borg", **self.repos.get(client, {})}


def find_server(repo: str, servers: Mapping[str, Server]) -> Server | None:
    host = repo_host(repo)
    for server in servers.values():
        if host in (server.name, server.address):
            return server
    return None


def alive_interval(data: Mapping) -> int:
    """`borgbackup.serverAliveInterval` of a host's data (seconds)."""
    return int((data.get("borgbackup") or {}).get("serverAliveInterval", SERVER_ALIVE_INTERVAL))


def client_location(server: Server, client: str, alive: int = SERVER_ALIVE_INTERVAL) -> Location:
    """How the client reaches its repo: the forced `cd` on the server picks the directory."""
    user = server.repo_for(client)["user"]
    rsh = ssh_rsh(BACKUP_KEY, KNOWN_HOSTS, server.port, pinned_only=True, alive=alive)
    return Location(f"{user}@{server.address}:.", rsh)


def operator_location(server: Server, client: str, identity: str, known_hosts: str,
                      alive: int = SERVER_ALIVE_INTERVAL) -> Location:
    """How the operator reaches a client's repo with full access (prune, compact)."""
    repo = server.repo_for(client)
    port = "" if server.port == 22 else f":{server.port}"
    url = f"ssh://{repo['user']}@{server.address}{port}{repo['path']}"
    key = os.path.expanduser(identity)
    return Location(url, ssh_rsh(key, os.path.expanduser(known_hosts), alive=alive), key)


@dataclass(frozen=True)
class PlannedJob:
    """A job with where it goes: `server` is set when the job is enrolled on a fleet server."""

    job: Job
    location: Location
    server: Server | None = None


def plan_jobs(client: str, data: Mapping, servers: Mapping[str, Server]) -> list[PlannedJob]:
    planned = []
    for name, job_data in sorted(((data.get("borgbackup") or {}).get("jobs") or {}).items()):
        job = Job.from_data(name, job_data)
        server = find_server(job.repo, servers)
        if server is not None and server.name != client:
            planned.append(PlannedJob(job, client_location(server, client, alive_interval(data)), server))
        else:
            planned.append(PlannedJob(job, Location(job.repo)))
    return planned


def serve_line(command: str, key: str) -> str:
    """One authorized_keys line; a `"` in the command is escaped as sshd's option syntax wants."""
    escaped = command.replace('"', '\\"')  # sshd unescapes only \" inside an option
    return f'command="{escaped}",restrict {key}'


def installed_keys(authorized_keys_text: str, command: str) -> list[str]:
    """The keys an authorized_keys file gives this forced command (the inverse of `serve_line`).

    >>> installed_keys('command="cd /r && borg serve",restrict ssh-ed25519 AAAA c@h\\n', "cd /r && borg serve")
    ['ssh-ed25519 AAAA c@h']
    """
    prefix = serve_line(command, "")
    return [line[len(prefix):] for line in authorized_keys_text.splitlines() if line.startswith(prefix) and line[len(prefix):]]


def repo_serve_command(path: str, repo: Mapping, append_only: bool) -> str:
    """NixOS' repos module forced command for one repo."""
    restrict = "--restrict-to-path ." if repo.get("allowSubRepos") else "--restrict-to-repository ."
    words = [f"cd {shlex.quote(path)} && borg serve {restrict}"]
    if append_only:
        words.append("--append-only")
    if repo.get("quota"):
        words.append(f"--storage-quota {shlex.quote(str(repo['quota']))}")
    return " ".join(words)


def server_repos(server: Server, enrolled: Mapping[str, str | None]) -> dict[str, dict]:
    """The server's repos: its own data plus one per enrolled client, with the client's key
    appended to `authorizedKeysAppendOnly`. `enrolled` maps client name -> public key (None
    while the client has no key yet)."""
    repos = {name: {"user": "borg", **repo} for name, repo in server.repos.items()}
    for client, key in enrolled.items():
        repo = repos.setdefault(client, server.repo_for(client))
        keys = list(repo.get("authorizedKeysAppendOnly") or [])
        if key and key not in keys:
            keys.append(key)
        repo["authorizedKeysAppendOnly"] = keys
    return repos


def repo_accounts(repos: Mapping[str, Mapping]) -> tuple[list[str], list[str], list[str]]:
    """(users, groups, repo paths) a server needs for these repos: what its state is read for.

    >>> repo_accounts({"host01": {"user": "borg", "path": "/srv/borg/host01"}})
    (['borg'], ['borg'], ['/srv/borg/host01'])
    """
    users = sorted({repo["user"] for repo in repos.values()} or {"borg"})
    groups = sorted({repo.get("group") or repo["user"] for repo in repos.values()} or {"borg"})
    return users, groups, sorted(repo["path"] for repo in repos.values())


def authorized_keys(repos: Mapping[str, Mapping], operator_keys: tuple[str, ...]) -> dict[str, list[str]]:
    """authorized_keys lines per server user. Operator keys reach every repo of that user
    (`--restrict-to-path` their common base directory), installed once each."""
    lines: dict[str, list[str]] = {}
    paths: dict[str, list[str]] = {}
    for name in sorted(repos):
        repo = repos[name]
        user, path = repo.get("user", "borg"), repo["path"]
        paths.setdefault(user, []).append(path)
        out = lines.setdefault(user, [])
        for key in repo.get("authorizedKeys") or ():
            out.append(serve_line(repo_serve_command(path, repo, append_only=False), key))
        for key in repo.get("authorizedKeysAppendOnly") or ():
            out.append(serve_line(repo_serve_command(path, repo, append_only=True), key))
    for user, user_paths in paths.items():
        base = os.path.commonpath(user_paths) if len(user_paths) > 1 else os.path.dirname(user_paths[0])
        for key in operator_keys:
            lines[user].append(serve_line(f"borg serve --restrict-to-path {shlex.quote(base)}", key))
    return lines


# --- what a repo server's authorized_keys would lose ---------------------------------------------------------

_SERVE_LINE = re.compile(r'^command="(?P<command>(?:[^"\\]|\\.)*)",restrict (?P<key>\S+ \S+)(?: (?P<comment>.*))?$')


def fingerprint(key: str) -> str:
    """`SHA256:...` as `ssh-keygen -l` prints it, of a `type base64 [comment]` public key.

    >>> fingerprint("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJiKwh2vV4svoHEeqo5EruU+Yz3yxsu/kkxglNST2IXO root@vm")
    'SHA256:JHyAeTS83C1owjerDFS4eki59za9G5lxeGLPWPy9qkM'
    """
    try:
        blob = base64.b64decode(key.split()[1], validate=True)
    except (IndexError, ValueError):
        return key[:40]
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class KeyChange:
    """One authorized_keys line of a repo server's user, added or removed by a run."""

    user: str
    line: str
    added: bool

    @property
    def _parsed(self) -> dict:
        match = _SERVE_LINE.match(self.line)
        return match.groupdict() if match else {"command": "", "key": self.line, "comment": None}

    @property
    def operator(self) -> bool:
        return self._parsed["command"].startswith("borg serve --restrict-to-path ")

    @property
    def repo_path(self) -> str | None:
        match = re.match(r"^cd (\S+|'[^']*') && borg serve ", self._parsed["command"])
        return shlex.split(match.group(1))[0] if match else None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self._parsed["key"])

    def describe(self) -> str:
        what = "operator key" if self.operator else f"repo {self.repo_path}" if self.repo_path else "not a borg serve line"
        comment = f" {self._parsed['comment']}" if self._parsed["comment"] else ""
        return f"{'+' if self.added else '-'} {self.user}: {self.fingerprint}{comment} ({what})"


def key_changes(current: Mapping[str, str], wanted: Mapping[str, list[str]]) -> list[KeyChange]:
    """The lines `wanted` (user -> lines) adds to and removes from `current` (user -> authorized_keys text)."""
    changes = []
    for user in sorted(set(wanted) | {user for user, text in current.items() if text}):
        have = [line for line in current.get(user, "").splitlines() if line.strip()]
        want = wanted.get(user, [])
        changes += [KeyChange(user, line, False) for line in have if line not in want]
        changes += [KeyChange(user, line, True) for line in want if line not in have]
    return changes


def unexplained_removals(changes: list[KeyChange], wanted: Mapping[str, list[str]], inventory_hosts: set[str],
                         repo_names: Mapping[str, str], revoke: set[str]) -> list[str]:
    """Why each removal nobody asked for would go: the last key of a repo whose host is still in the inventory,
    or a user's last operator key. A key replaced by another for the same repo (a new backup key) is not one;
    `revoke` (host names, key fingerprints, or `operator`) says a removal is meant."""
    remaining = [KeyChange(user, line, True) for user, lines in wanted.items() for line in lines]
    out = []
    for change in changes:
        if change.added or change.fingerprint in revoke:
            continue
        if change.operator:
            if "operator" not in revoke and not any(c.operator and c.user == change.user for c in remaining):
                out.append(f"{change.describe()} would be removed: {change.user} would keep no operator key "
                           f"(borgbackup.operatorKeys; to revoke it on purpose: --data revoke=operator)")
            continue
        path = change.repo_path
        owner = repo_names.get(path) or (os.path.basename(path) if path else None)
        if owner in inventory_hosts and owner not in revoke \
                and not any(c.repo_path == path and c.user == change.user for c in remaining):
            out.append(f"{change.describe()} would be removed, but {owner} is still in the inventory and no job of "
                       f"it is enrolled here any more (check its borgbackup.jobs.*.repo; to revoke it on purpose: "
                       f"--data revoke={owner})")
    return out
