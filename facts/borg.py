"""Facts about borg clients and repo servers, each read in ONE remote command.

    pyinfra INVENTORY fact facts.borg.BackupFreshness

pyinfra 3 does not cache facts, and a deploy's operations each need the same
view of a host, so `client_state(host)` / `server_state(host)` read a host once
per run and keep it until an operation of ours changes that host (`forget`).
"""

from __future__ import annotations

import hashlib

from dataclasses import dataclass, field
from datetime import datetime, timezone
from collections.abc import Mapping

import gevent
import gevent.event
from gevent.lock import RLock
from pyinfra import context
from pyinfra.context import ctx_host, ctx_state
from pyinfra.api import FactBase
from pyinfra.api.exceptions import FactProcessError

from pyinfra_backup.borg import (
    BACKUP_KEY, KNOWN_HOSTS, STATE_DIR, Archive, RepoListing, borg_env, list_argv, parse_list,
)
from pyinfra_backup import ledger_store
from pyinfra_backup.escrow import digest_sources, is_keyfile, parse_config_digests, parse_digests, repo_config_digest_command
from pyinfra_backup.enrollment import PlannedJob, Server, plan_jobs, repo_accounts, server_repos
from pyinfra_backup.jsonable import JsonFact
from pyinfra_backup.metrics import TEXTFILE_NAME
from pyinfra_backup.records import JobRecords, job_dir, parse_records, read_sections
from pyinfra_backup.restore_mark import files_stamp, parse_mark
from pyinfra_backup.run_lock import LockRequest, LockState, parse_lock
from pyinfra_backup.schedule import Schedule
from pyinfra_backup.sshd import SSHD_CONFIG, dropin_path
from pyinfra_backup.shell import ReadFile, Section, parse_sections, sectioned_script, sh_join, with_env

NO_KEY = 3  # exit status of a listing skipped because the host has no backup key yet


def fleet_servers(inventory) -> dict[str, Server]:
    """Every host of the inventory with `borgbackup.repos`, by inventory name (worked out once
    per inventory: every operation of every host asks)."""
    if not hasattr(inventory, "_pyinfra_backup_servers"):
        servers = {}
        for host in inventory:
            data = host.data.dict()
            if (data.get("borgbackup") or {}).get("repos") is not None:
                servers[host.name] = Server.from_data(host.name, data)
        inventory._pyinfra_backup_servers = servers
    return inventory._pyinfra_backup_servers


def host_plan(host, inventory) -> list[PlannedJob]:
    """The host's jobs and where each goes (worked out once per run)."""
    if not hasattr(host, "_pyinfra_backup_plan"):
        host._pyinfra_backup_plan = plan_jobs(host.name, host.data.dict(), fleet_servers(inventory))
    return host._pyinfra_backup_plan


def _plan_or_host(plan: list[PlannedJob] | None) -> list[PlannedJob]:
    """A fact's `plan` argument, or (from the command line, which cannot pass one) the current host's."""
    return host_plan(context.host, context.state.inventory) if plan is None else plan


def planned_job(planned: PlannedJob | str) -> PlannedJob:
    """A fact's `planned` argument, or a job name of the current host (from the command line)."""
    if not isinstance(planned, str):
        return planned
    for candidate in host_plan(context.host, context.state.inventory):
        if candidate.job.name == planned:
            return candidate
    raise ValueError(f"{context.host.name}: no job {planned!r} in borgbackup.jobs")


@dataclass
class ClientState(JsonFact):
    hostname: str
    key: str | None
    known_hosts: str
    records: dict[str, JobRecords] = field(default_factory=dict)
    textfile: str | None = None  # the metrics textfile's content, when monitoring.textfile_dir is set
    key_digests: dict[str, str] = field(default_factory=dict)  # repo id -> key digest (escrow), as the host sees them
    lock: LockState | None = None  # this run's hold on the host (the run lock), when asked for


def _listing_command(planned: PlannedJob) -> str:
    listing = with_env(borg_env(planned.job, planned.location), list_argv(planned.job, planned.location))
    if planned.server is None:
        return listing
    return f"test -f {BACKUP_KEY} || exit {NO_KEY}; {listing}"


def _client_sections(plan: list[PlannedJob], textfile: str | None, digests: bool = False,
                     lock: LockRequest | None = None) -> dict[str, str]:
    sections = {"runlock": lock.section()} if lock else {}  # first: what follows is read under the lock
    sections |= {
        "hostname": ReadFile("/proc/sys/kernel/hostname"),  # = uname -n, without starting a process
        "key": ReadFile(f"{BACKUP_KEY}.pub", only_if=BACKUP_KEY),
        "known_hosts": ReadFile(KNOWN_HOSTS),
    }
    if textfile:
        sections["textfile"] = ReadFile(textfile)
    for planned in plan:
        for key, command in read_sections(planned.job.name).items():
            sections[f"{key}.{planned.job.name}"] = command
    if digests:  # the escrow's check: each repo key the host can see, digested (pyinfra_backup/escrow.py)
        commands = dict.fromkeys(filter(None, (digest_sources(p.job, p.server is None) for p in plan)))
        sections.update({f"keydigests.{index}": command for index, command in enumerate(commands)})
    return sections


def _client_state(plan: list[PlannedJob], sections: dict[str, Section]) -> ClientState:
    key = sections["key"]
    state = ClientState(
        hostname=sections["hostname"].text.strip(),
        key=key.text.strip() if key.ok and key.text.strip() else None,
        known_hosts=sections["known_hosts"].text if sections["known_hosts"].ok else "",
    )
    for planned in plan:
        name = planned.job.name
        state.records[name] = parse_records({
            key: sections[f"{key}.{name}"].text if sections[f"{key}.{name}"].ok else None
            for key in read_sections(name)
        })
    if "textfile" in sections and sections["textfile"].ok:
        state.textfile = sections["textfile"].text + "\n"
    for name, section in sections.items():
        if name.startswith("keydigests.") and section.ok:
            state.key_digests.update(parse_digests(section.stdout))
    if "runlock" in sections:
        try:
            state.lock = parse_lock(sections["runlock"].stdout)
        except ValueError as error:
            raise FactProcessError(f"{error} (exit status {sections['runlock'].rc}; is flock installed?)") from None
    return state


def _repo_sections(plan: list[PlannedJob]) -> dict[str, str]:
    return {f"list.{planned.job.name}": _listing_command(planned) for planned in plan}


def _listings(plan: list[PlannedJob], sections: dict[str, Section]) -> dict[str, RepoListing]:
    listings = {}
    for planned in plan:
        listing = sections[f"list.{planned.job.name}"]
        if listing.rc == NO_KEY:
            listings[planned.job.name] = RepoListing(exists=False)  # not enrolled yet
        else:
            listings[planned.job.name] = parse_list(listing.text, listing.rc, listing.error)
    return listings


class BorgClient(FactBase):
    """A backup client as a backup run needs it, without touching any repo: hostname, backup
    key, pinned server keys, each job's records (pyinfra_backup/records.py) and the metrics
    textfile; with `lock`, it first takes the host's run lock (pyinfra_backup/run_lock.py) and says
    how (`ClientState.lock`). Example: `host.get_fact(BorgClient, plan=host_plan(host, inventory), textfile=None)`;
    without `plan` (`pyinfra INVENTORY fact facts.borg.BorgClient`), the host's jobs."""

    def command(self, plan: list[PlannedJob] | None = None, textfile: str | None = None, digests: bool = False,
                lock: LockRequest | None = None) -> str:
        self.plan = plan = _plan_or_host(plan)
        return sectioned_script(_client_sections(plan, textfile, digests, lock))

    def process(self, output) -> ClientState:
        return _client_state(self.plan, parse_sections(output))


class BorgRepos(FactBase):
    """Each job's repo as `borg list` shows it (all archives, checkpoints too), in one command.
    Example: `host.get_fact(BorgRepos, plan=host_plan(host, inventory))` -> {job: RepoListing}; without `plan`,
    the host's jobs."""

    def command(self, plan: list[PlannedJob] | None = None) -> str:
        self.plan = plan = _plan_or_host(plan)
        return sectioned_script(_repo_sections(plan))

    def process(self, output) -> dict[str, RepoListing]:
        return _listings(self.plan, parse_sections(output))


def tampering(planned: PlannedJob, host_name: str) -> str | None:
    """Why the archive ledger (on this, the operator's machine) holds the job's fleet repo as
    tampered, or None. An unreadable ledger counts as tampered: maintenance stops on it too."""
    if planned.server is None or not planned.job.keep:
        return None
    try:
        found = ledger_store.load(planned.server.name, host_name).tampered
    except ledger_store.LedgerError as error:
        return str(error)
    return f"{found.message()} (found {found.found}; maintenance stopped until acknowledged)" if found else None


def freshness(planned: PlannedJob, state: ClientState, listing: RepoListing, now: datetime,
              tampered: str | None = None) -> dict:
    """One job's freshness in the contract's shape, from the repo itself. A repo whose last
    `borg check` failed is in error, whatever its listing says (`borg list` reads no data); one
    the archive ledger holds as tampered (`tampered`: why) is `tampered`, whatever else; one whose
    records on the host cannot be read (torn by a crash) is `unknown`, and due: it backs up again."""
    job = planned.job
    archives = listing.job_archives(job.base_name(state.hostname)) if listing.exists else []
    last = archives[-1] if archives else None
    error, check = listing.error, state.records[job.name].check
    if error and last is None and state.records[job.name].last_archive:  # unreadable: the host's last known one
        last = Archive(*state.records[job.name].last_archive, "")
    if not error and check and not check.ok:
        error = f"the last borg check failed (exit status {check.rc}, {check.time:%Y-%m-%d %H:%M} UTC)"
    if tampered:
        status, error = "tampered", tampered
    elif error:
        status = "error"
    elif state.records[job.name].unreadable:
        status, error = "unknown", unknown_reason(job.name, state.records[job.name])
    else:
        status = Schedule.parse(list(job.start_at)).due_state(last.time if last else None, now)
    created = (state.records[job.name].create or {}).get("archive", {})
    stats = created.get("stats", {}) if last and created.get("name") == last.name else {}
    attempt = state.records[job.name].attempt  # the host's record of the last create run on it, failed or not
    return {
        "repo": job.repo,
        "last_archive": last.name if last else None,
        "last_time": last.time.isoformat() if last else None,
        "age_seconds": int((now - last.time).total_seconds()) if last else None,
        "due": status in ("due", "stale", "missing", "unknown"),
        "status": status,
        "error": error,
        "original_size": stats.get("original_size"),
        "deduplicated_size": stats.get("deduplicated_size"),
        "last_attempt": attempt.time.isoformat() if attempt else None,
        "last_attempt_age_seconds": int((now - attempt.time).total_seconds()) if attempt else None,
        "last_attempt_ok": attempt.rc == 0 if attempt else None,
    }


def unknown_reason(job: str, records: JobRecords) -> str:
    """Why a job's state is `unknown`: its record files that cannot be read."""
    return (f"state unknown: unreadable record {', '.join(records.unreadable)} in {job_dir(job)} "
            "(a run killed while writing, or a hand edit): the job backs up again")


class BackupFreshness(FactBase):
    """Freshness of every job of the host, from its repos, in one remote command (and the archive
    ledger of this machine: `tampered`):
    `{job: {repo, last_archive, last_time, age_seconds, due, status, error, original_size, deduplicated_size,
    last_attempt, last_attempt_age_seconds, last_attempt_ok}}` (the last three: the host's record of its last
    create attempt, successful or not; None when none was recorded)."""

    def command(self) -> str:
        self.plan, self.host_name = host_plan(context.host, context.state.inventory), context.host.name
        return sectioned_script({**_client_sections(self.plan, None), **_repo_sections(self.plan)})

    def process(self, output) -> dict[str, dict]:  # no pyinfra context needed here (tests/infra parses over testinfra)
        sections = parse_sections(output)
        state, listings = _client_state(self.plan, sections), _listings(self.plan, sections)
        now = datetime.now(timezone.utc)
        return {p.job.name: freshness(p, state, listings[p.job.name], now, tampering(p, self.host_name))
                for p in self.plan}


@dataclass
class ServerState(JsonFact):
    host_keys: list[str]
    users: dict[str, str]  # user -> home
    groups: set[str]
    dirs: dict[str, str]  # path -> "user:group:mode"
    authorized_keys: dict[str, str]  # user -> file content
    sshd_dropins: dict[str, str] = field(default_factory=dict)  # user -> our sshd drop-in's content
    sshd_config: str | None = None  # the main sshd_config (does it include the drop-ins?)
    key_digests: dict[str, tuple[str, str]] = field(default_factory=dict)  # repo path -> (repo id, key digest): escrow


class BorgServer(FactBase):
    """A repo server: SSH host keys, the repo users and groups, repo directories and each
    user's authorized_keys. Example: `host.get_fact(BorgServer, users=["borg"], paths=[...])`."""

    def command(self, users: list[str], groups: list[str], paths: list[str], digests: tuple[str, ...] = ()) -> str:
        """`digests`: repo paths whose key digest the escrow compares (repokey repos of clients with escrow)."""
        sections = {"hostkeys": SshHostKeys().command(), "groups": sh_join(["getent", "group", *groups])}
        for user in users:
            sections[f"user.{user}"] = sh_join(["getent", "passwd", user])
            sections[f"keys.{user}"] = f'cat "$(getent passwd {sh_join([user])} | cut -d: -f6)/.ssh/authorized_keys"'
            sections[f"sshd.{user}"] = ReadFile(dropin_path(user))
        sections["sshd_config"] = ReadFile(SSHD_CONFIG)
        if paths:
            sections["dirs"] = sh_join(["stat", "-c", "%U:%G:%a:%n", *paths])
        if digests:
            sections["keydigests"] = repo_config_digest_command(*digests)
        return sectioned_script(sections)

    def process(self, output) -> ServerState:
        sections = parse_sections(output)
        users = {
            name.split(".", 1)[1]: section.text.split(":")[5]
            for name, section in sections.items()
            if name.startswith("user.") and section.ok
        }
        dirs = {}
        for line in sections["dirs"].stdout if "dirs" in sections else ():
            owner, group, mode, path = line.split(":", 3)
            dirs[path] = f"{owner}:{group}:{mode}"
        return ServerState(
            host_keys=SshHostKeys().process(sections["hostkeys"].stdout),
            users=users,
            groups={line.split(":")[0] for line in sections["groups"].stdout if line},
            dirs=dirs,
            authorized_keys={
                name.split(".", 1)[1]: "\n".join(section.stdout) + "\n"
                for name, section in sections.items()
                if name.startswith("keys.") and section.ok
            },
            sshd_dropins={name.split(".", 1)[1]: "".join(line + "\n" for line in section.stdout)
                          for name, section in sections.items() if name.startswith("sshd.") and section.ok},
            sshd_config=sections["sshd_config"].text if sections.get("sshd_config") and sections["sshd_config"].ok else None,
            key_digests=parse_config_digests(sections["keydigests"].stdout) if "keydigests" in sections else {},
        )


def _cache(host) -> dict:
    if not hasattr(host, "_pyinfra_backup_cache"):
        host._pyinfra_backup_cache = {}
    return host._pyinfra_backup_cache


def repo_listings(host) -> dict[str, RepoListing]:
    """This run's view of a client's repos (`borg list`), read once until `forget(host)`."""
    cache = _cache(host)
    if "repos" not in cache:
        cache["repos"] = host.get_fact(BorgRepos, plan=host_plan(host, context.state.inventory))
    return cache["repos"]


def client_state(host) -> ClientState:
    """This run's view of a backup client (no repo read), read once until `forget(host)`."""
    cache = _cache(host)
    if "client" not in cache:
        plan = host_plan(host, context.state.inventory)
        cache["client"] = host.get_fact(BorgClient, plan=plan, textfile=textfile_path(host),
                                        digests=bool(escrow_recipients(host)),
                                        lock=LockRequest.for_host(host.data.dict()))
        cache.setdefault("client at start", cache["client"])
    return cache["client"]


def client_at_start(host) -> ClientState:
    """The client as first read in this run, kept by `forget`: for what the run's earlier steps do
    not change (a create leaves the job's check records as they were)."""
    return _cache(host).get("client at start") or client_state(host)


def read_fleet_at_once() -> None:
    """Read every backup client (`client_state`) and repo server (`server_state`) of the run in
    parallel, once per run, while the deploy is prepared: a deploy can then leave out what no host
    needs (a backup key operation on hosts that have their key), and no operation waits for a
    read of its own. pyinfra prepares hosts concurrently: the others wait for the reads. A host
    whose read fails is left to the operation that reads it again (it fails alone)."""
    state = ctx_state.get()
    done = getattr(state, "_pyinfra_backup_fleet_read", None)
    if done is None:
        done = state._pyinfra_backup_fleet_read = gevent.event.Event()
        inventory, servers = state.inventory, fleet_servers(state.inventory)

        def read(host):
            with ctx_host.use(host):
                try:
                    if host.name in servers:  # the reads `tasks.borg.repo_server` makes
                        repos = server_repos(servers[host.name], dict.fromkeys(
                            client.name for client in enrolled_clients(servers[host.name], inventory)))
                        users, groups, paths = repo_accounts(repos)
                        server_state(host, users=users, groups=groups, paths=paths)
                    if host_plan(host, inventory):
                        client_state(host)
                except Exception:  # noqa: BLE001 (the operation reports it, for this host only)
                    pass

        hosts = [host for host in inventory.get_active_hosts() if host.name in servers or host_plan(host, inventory)]
        gevent.joinall([gevent.spawn(read, host) for host in hosts])  # not state.pool: its slots are the deploys waiting here
        done.set()
    done.wait()


def enrolled_clients(server: Server, inventory) -> list:
    """The hosts of the inventory with a job whose repo is on this server."""
    return [client for client in inventory if server.name in servers_of(host_plan(client, inventory))]


def has_backup_key(host) -> bool | None:
    """Whether this run's view of the client has its backup key; None when it could not be read."""
    client = _cache(host).get("client")
    return None if client is None else client.key is not None


def escrow_recipients(host) -> list:
    """`borgbackup.escrow.recipients` of the host: with them, its fact read shows its repo keys' digests."""
    return list(((host.data.get("borgbackup") or {}).get("escrow") or {}).get("recipients") or ())


def textfile_path(host) -> str | None:
    """Where the host's node_exporter textfile goes (`monitoring.textfile_dir`), if anywhere."""
    directory = (host.data.get("monitoring") or {}).get("textfile_dir")
    return f"{directory.rstrip('/')}/{TEXTFILE_NAME}" if directory else None


def server_state(host, users: list[str], groups: list[str], paths: list[str]) -> ServerState:
    """This run's view of a repo server, read once until `forget(host)`."""
    cache = _cache(host)
    if "server" not in cache:
        cache["server"] = host.get_fact(BorgServer, users=users, groups=groups, paths=paths,
                                        digests=escrowed_repokey_paths(host))
    return cache["server"]


def server_state_read(host) -> ServerState | None:
    """The repo server as this run last read it, or None when it has not been read (not in the run)."""
    return _cache(host).get("server")


def escrowed_repokey_paths(server_host) -> tuple[str, ...]:
    """The server's repo paths whose key only the server sees (repokey modes) and whose client keeps an escrow."""
    inventory = context.state.inventory
    server = fleet_servers(inventory).get(server_host.name)
    paths = set()
    for client in enrolled_clients(server, inventory) if server else ():
        if escrow_recipients(client):
            paths.update(server.repo_for(client.name)["path"] for p in host_plan(client, inventory)
                         if p.server is not None and p.server.name == server.name and p.job.mode != "none"
                         and not is_keyfile(p.job.mode))
    return tuple(sorted(paths))


def server_key_digests(planned: PlannedJob, client_name: str) -> dict[str, str] | None:
    """{repo id: key digest} of the job's repo as its server's read of this run saw it; None when it was not read."""
    server_host = context.state.inventory.get_host(planned.server.name) if planned.server else None
    server = server_state_read(server_host) if server_host is not None else None
    found = server.key_digests.get(planned.server.repo_for(client_name)["path"]) if server else None
    return dict([found]) if found else None


def forget(host) -> None:
    """Drop what we know of a host: an operation of ours is about to change it."""
    cache = _cache(host)
    for key in [key for key in cache if key not in ("lock", "client at start")]:
        del cache[key]
    host._pyinfra_backup_changed = True


def changed_in_run(host) -> bool:
    """Whether an operation of ours changed the host in this run."""
    return getattr(host, "_pyinfra_backup_changed", False)


class SshHostKeys(FactBase):
    """The host's SSH host public keys as `type base64` lines. Example: `host.get_fact(SshHostKeys)`."""

    def command(self) -> str:
        return "cat /etc/ssh/ssh_host_*_key.pub"

    def process(self, output) -> list[str]:
        return [" ".join(line.split()[:2]) for line in output if line.strip()]


def host_keys(host) -> list[str]:
    """A server's SSH host keys, from this run's view when we have one; else read once for all
    the clients that ask at the same time (each client's operation runs in its own greenlet)."""
    cache = _cache(host)
    with cache.setdefault("lock", RLock()):
        if "server" in cache:
            return cache["server"].host_keys
        if "host_keys" not in cache:
            cache["host_keys"] = host.get_fact(SshHostKeys)
        return cache["host_keys"]


def backup_key(host) -> str | None:
    """A client's backup public key, from this run's view when we have one."""
    cache = _cache(host)
    if "client" in cache:
        return cache["client"].key
    return host.get_fact(BackupKey)


class BackupKey(FactBase):
    """The host's dedicated backup public key, or None. Example: `host.get_fact(BackupKey)`."""

    def command(self) -> str:
        return f"test -f {BACKUP_KEY} && cat {BACKUP_KEY}.pub || true"

    def process(self, output) -> str | None:
        return "\n".join(output).strip() or None


class RestoreTarget(FactBase):
    """A restore target: how many entries it holds and which archive we last restored into it.
    Example: `host.get_fact(RestoreTarget, path="/srv/restore")` -> RestoreTargetState(entries=0, ...)."""

    @staticmethod
    def key(target: str, paths: tuple[str, ...] = ()) -> str:
        """What a restore's marker is kept by: the target, and the archive paths when only some are restored."""
        return "\0".join((target, *paths))

    @staticmethod
    def marker(path: str) -> str:
        return f"{STATE_DIR}/restores/{hashlib.sha256(path.encode()).hexdigest()[:16]}"

    def command(self, path: str, key: str | None = None, roots: tuple[str, ...] = ()) -> str:
        """`key`: what the marker is kept by, when one target receives several kinds of archive;
        `roots`: the restored files, stamped as they are now (`pyinfra_backup.restore_mark`)."""
        return sectioned_script({
            "entries": f"ls -A {sh_join([path])} | wc -l",
            "restored": f"cat {self.marker(key or path)}",
            **({"stamp": files_stamp(tuple(roots))} if roots else {}),
        })

    def process(self, output) -> RestoreTargetState:
        sections = parse_sections(output)
        entries, stamp = sections["entries"], sections.get("stamp")
        restored, recorded = parse_mark(sections["restored"].text if sections["restored"].ok else None)
        return RestoreTargetState(
            entries=int(entries.text.strip() or 0) if entries.ok else 0,
            restored=restored,
            stamp=recorded,
            stamp_now=stamp.text.strip() if stamp is not None and stamp.ok else None,
        )


@dataclass
class RestoreTargetState(JsonFact):
    entries: int
    restored: str | None
    stamp: str | None = None  # the restored files as the last restore left them
    stamp_now: str | None = None  # ... and as they are now

    @property
    def unchanged(self) -> bool:
        """The restored files are as the last restore left them."""
        return self.stamp is not None and self.stamp == self.stamp_now


def servers_of(plan: list[PlannedJob]) -> Mapping[str, Server]:
    return {p.server.name: p.server for p in plan if p.server is not None}


@dataclass
class RepoFiles(JsonFact):
    """A repo directory as borg's append-only rollback needs it."""

    repo_id: str | None
    transactions: list[tuple[int, str]]  # (transaction id, UTC time) in the order written
    segments: list[int]
    index_files: list[str]  # index.N, hints.N, integrity.N


class BorgRepoFiles(FactBase):
    """A repo's id, transaction log, segment numbers and index files, read on the server.
    Example: `host.get_fact(BorgRepoFiles, path="/var/lib/borgbackup/host01")`."""

    def command(self, path: str) -> str:
        repo = sh_join([path])
        return sectioned_script({
            "config": f"sed -n 's/^id = //p' {repo}/config",
            "transactions": f"cat {repo}/transactions",
            "segments": f"cd {repo}/data && find . -type f -name '[0-9]*' | sed 's|.*/||'",
            "index": f"cd {repo} && ls -1 | grep -E '^(index|hints|integrity)[.][0-9]+$'",
        })

    def process(self, output) -> RepoFiles:
        sections = parse_sections(output)
        transactions = []
        for line in sections["transactions"].stdout:
            words = line.replace(",", "").split()  # transaction 9 UTC time 2026-11-27T12:10:37.643182
            if len(words) == 5 and words[0] == "transaction":
                transactions.append((int(words[1]), words[4]))
        return RepoFiles(
            repo_id=sections["config"].text.strip() or None,
            transactions=transactions,
            segments=sorted(int(s) for s in sections["segments"].stdout if s.isdigit()),
            index_files=[line for line in sections["index"].stdout if line],
        )
