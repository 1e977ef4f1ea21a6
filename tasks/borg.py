"""Idempotent borg operations: repo servers, enrollment, create, prune + compact, check, restore.

Each operation reads this run's view of the host (facts/borg.py), compares, and
either says why nothing is needed (`host.noop`) or yields the commands. Use them
from a deploy (see deploys/backup.py) or directly:

    pyinfra INVENTORY tasks.borg.restore job=system target=/srv/restore
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone

from pyinfra import host, inventory, logger
from pyinfra import state as ctx_state
from pyinfra.api import FunctionCommand
from pyinfra.api.exceptions import ConnectError
from pyinfra.facts.files import Directory
from pyinfra.facts.server import Home

from facts.borg import (
    BorgRepoFiles, RestoreTarget, backup_key as client_key, changed_in_run, client_at_start, client_state,
    enrolled_clients, fleet_servers, forget, host_keys, host_plan, repo_listings, server_state, server_state_read,
    servers_of, tampering, textfile_path, unknown_reason,
)
from tasks import operator
from tasks.common import HostError, explained, host_operation
from pyinfra_backup.borg import (
    BACKUP_KEY, KNOWN_HOSTS, check_argv, compact_argv, create_argv,
    archive_paths, extract_argv, borg_env, explain_errors, init_argv, parse_interval, prune_argv,
)
from pyinfra_backup import ledger, ledger_store
from pyinfra_backup.dumps import DataSpec, create_script
from pyinfra_backup.enrollment import (
    REPO_BASE, authorized_keys, installed_keys, key_changes, repo_accounts, repo_serve_command, server_repos,
    unexplained_removals,
)
from pyinfra_backup.metrics import job_metrics_from_records, render_textfile
from pyinfra_backup.ping import ping
from pyinfra_backup.prune import to_prune
from pyinfra_backup.rollback import RollbackError, files_after, quarantine_dir, rollback_point, rollback_script
from pyinfra_backup.records import check_command, create_command, record_attempt
from pyinfra_backup.restore_mark import restored_roots, write_mark
from pyinfra_backup.schedule import Schedule
from pyinfra_backup.shell import atomic_write, sh_join, with_env
from pyinfra_backup.sshd import (
    CLIENT_ALIVE_COUNT_MAX, CLIENT_ALIVE_INTERVAL, DROPIN_DIR, SSHD_CONFIG, dropin_content, dropin_path, includes_dropins,
    install_command,
)



def _now() -> datetime:
    return datetime.now(timezone.utc)


def _ago(then: datetime) -> str:
    seconds = int((_now() - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _planned(job: str):
    for planned in host_plan(host, inventory):
        if planned.job.name == job:
            return planned
    raise HostError(f"{host.name}: borgbackup.jobs.{job}: no such job")


def _lock_wait() -> int:
    return int((host.data.get("borgbackup") or {}).get("lockWait", 60))


def _forced(job: str, key: str = "backup_force") -> bool:
    """`backup_force` / `backup_force_check`: true, a job name or a list of job names
    (`--data backup_force=true`; pyinfra turns true/false into booleans)."""
    flag = host.data.get(key)
    if isinstance(flag, str):
        return flag == job or flag == "true"
    return flag is True or (isinstance(flag, list) and job in flag)


class JobError(HostError):
    """One job failed: recorded on the host (last-attempt), its later steps are skipped, the
    host's other jobs go on, and `outcome()` fails the host at the end of the run."""

    def __init__(self, job: str, message: str):
        super().__init__(f"{host.name}: job {job}: {message}")
        self.job = job
        failed_jobs().add(job)

    def record(self) -> list[str]:
        forget(host)
        return [record_attempt(self.job, 2, str(self))]


def step_failed(failed_host, reason: str) -> None:
    """A backup step of another module (tasks/state.py) failed on this host: `outcome` fails the
    host at the end of the run and names the reason with the failed jobs'."""
    if not hasattr(failed_host, "_pyinfra_backup_step_failures"):
        failed_host._pyinfra_backup_step_failures = []
    failures = failed_host._pyinfra_backup_step_failures
    if reason not in failures:
        failures.append(reason)


def failed_jobs() -> set[str]:
    """Jobs of this host that failed in this run (kept on the host object for the run)."""
    if not hasattr(host, "_pyinfra_backup_failed_jobs"):
        host._pyinfra_backup_failed_jobs = set()
    return host._pyinfra_backup_failed_jobs


def _job(job: str):
    """The planned job, or None (with a noop saying why) when it failed earlier in this run."""
    planned = _planned(job)
    if job in failed_jobs():
        host.noop(f"{job}: skipped, the job failed earlier in this run")
        return None
    return planned


def _readable_listing(job: str):
    listing = repo_listings(host)[job]
    if listing.error:
        raise JobError(job, f"cannot read repo: {listing.error}")
    return listing


# --- repo server -----------------------------------------------------------------------------


def _from_other_host(other, read):
    """`read(other)`: a fact of another host of the inventory (a client's key for its server, a
    server's host keys for its client). Raises Unreachable when that host cannot be reached: a
    host that failed to connect must fail alone, not end the run (pyinfra raises ConnectError)."""
    if other in ctx_state.failed_hosts:
        raise Unreachable(other.name, "it failed earlier in this run: see its own error" if other.connected else
                          "could not connect at the start of the run")
    try:
        return read(other)
    except ConnectError as error:
        raise Unreachable(other.name, str(error)) from None


class Unreachable(HostError):
    def __init__(self, name: str, why: str = "could not connect at the start of the run"):
        super().__init__(f"{host.name}: {name} is unreachable ({why})")
        self.name = name


def _server_layout(server_host):
    """The server's repos (data + enrolled clients) and what must be read to compare them. An
    unreachable client keeps the key the server already has for it (its access is never revoked
    because it was down during a run)."""
    server = fleet_servers(inventory)[server_host.name]
    enrolled, unreachable = {}, []
    for client in enrolled_clients(server, inventory):
        try:
            enrolled[client.name] = _from_other_host(client, client_key)
        except Unreachable:
            unreachable.append(client.name)
            enrolled[client.name] = None
    repos = server_repos(server, enrolled)
    users, groups, paths = repo_accounts(repos)
    current = server_state(server_host, users=users, groups=groups, paths=paths)
    for name in unreachable:
        repo = repos[name]
        installed = current.authorized_keys.get(repo["user"], "")
        enrolled[name] = next(iter(installed_keys(installed, repo_serve_command(repo["path"], repo, append_only=True))), None)
        logger.warning(f"{host.name}: {name} is unreachable: its installed backup key is kept")
    if unreachable:
        repos = server_repos(server, enrolled)
    return server, repos, users, groups, current


def _revoked() -> set[str]:
    """`--data revoke=HOST[,HOST]` (or a list): host names, key fingerprints or `operator`."""
    value = host.data.get("revoke") or ()
    return {str(v).strip() for v in (value.split(",") if isinstance(value, str) else value)} - {""}


def _checked_keys(server, repos, current) -> dict[str, list[str]]:
    """The server's authorized_keys lines, every change named in the output; a key that would go although its
    host is still in the inventory (a typo in a repo), or the last operator key, fails the server instead."""
    keys = authorized_keys(repos, server.operator_keys)
    changes = key_changes(current.authorized_keys, keys)
    names = {repo.get("path", f"{REPO_BASE}/{name}"): name for name, repo in server.repos.items()}
    refused = unexplained_removals(changes, keys, {h.name for h in inventory}, names, _revoked())
    if refused:
        raise HostError(f"{host.name}: nothing was changed: " + "; ".join(refused))
    for change in changes:
        logger.info(f"{host.name}: authorized_keys {change.describe()}")
    return keys


@host_operation
def repo_server():
    """Provision a repo server as NixOS' `services.borgbackup.repos` does: users, 0700 repo
    directories, and authorized_keys with one forced `borg serve` per key. Enrolled clients'
    append-only keys and `borgbackup.operatorKeys` are included; keys not in the data are removed, each
    named in the output. The last key of a repo whose host is still in the inventory, or a user's last operator
    key, goes only when `--data revoke=` names it; otherwise the server fails and nothing changes.
    Each repo user gets an sshd drop-in ending its dead sessions (`borgbackup.clientAliveInterval`).

    + revoke (host data, usually `--data`): host names, key fingerprints or `operator` that may lose their keys

    **Example:**

    .. code:: python

        repo_server()  # on every host with borgbackup.repos (deploys/backup_server.py, deploys/backup.py)
    """
    server, repos, users, groups, current = _server_layout(host)
    commands = [sh_join(["groupadd", "--system", group]) for group in groups if group not in current.groups]
    commands += _user_commands(users, repos, _checked_keys(server, repos, current), current)
    for name, repo in sorted(repos.items()):
        group = repo.get("group") or repo["user"]
        if current.dirs.get(repo["path"]) != f"{repo['user']}:{group}:700":
            commands.append(sh_join(["install", "-d", "-m", "0700", "-o", repo["user"], "-g", group, repo["path"]]))
    commands += _sshd_dropins(users, current)
    if not commands:
        host.noop(f"{len(repos)} repos and their keys are in place")
        return
    forget(host)
    yield from commands


def _user_commands(users: list[str], repos, keys: dict[str, list[str]], current) -> list[str]:
    """Each repo user made when missing, and its authorized_keys written (atomically) when it differs."""
    primary = {repo["user"]: repo.get("group") or repo["user"] for repo in repos.values()}
    commands = []
    for user in users:
        group = primary.get(user, user)
        home = current.users.get(user) or ("/var/lib/borgbackup" if user == "borg" else f"/var/lib/{user}")
        if user not in current.users:
            commands.append(sh_join(["useradd", "--system", "--gid", group, "--home-dir", home, "--shell", "/bin/sh", "--password", "*", user]))
        content = "".join(line + "\n" for line in keys.get(user, []))
        if current.authorized_keys.get(user) != content:
            commands.append(sh_join(["install", "-d", "-m", "0700", "-o", user, "-g", group, home, f"{home}/.ssh"]))
            commands.append(atomic_write(f"{home}/.ssh/authorized_keys", content, "0600", owner=user))
    return commands


def _sshd_dropins(users: list[str], current) -> list[str]:
    """A `Match User` drop-in per repo user whose content differs, checked with `sshd -t` and sshd
    reloaded; when the main sshd_config does not include the drop-in directory, said (no reload)."""
    data = host.data.get("borgbackup") or {}
    interval = int(data.get("clientAliveInterval", CLIENT_ALIVE_INTERVAL))
    count = int(data.get("clientAliveCountMax", CLIENT_ALIVE_COUNT_MAX))
    included = includes_dropins(current.sshd_config)
    if not included:
        host.log_styled(f"warning: {SSHD_CONFIG} does not Include {DROPIN_DIR}/*.conf: the repo users' sshd drop-ins "
                        "have no effect until it does", fg="yellow", log_func=logger.warning)
    return [install_command(dropin_path(user), dropin_content(user, interval, count), reload=included)
            for user in users if current.sshd_dropins.get(user) != dropin_content(user, interval, count)]


# --- client enrollment ----------------------------------------------------------------------


@host_operation
def backup_key():
    """A dedicated ed25519 key for this host's backups, made once on the host (0600).

    Example: `backup_key()` on every host with a job on a fleet server.
    """
    if client_state(host).key:
        host.noop(f"backup key {BACKUP_KEY} exists")
        return
    forget(host)
    yield f"install -d -m 0700 {os.path.dirname(BACKUP_KEY)} && ssh-keygen -q -t ed25519 -N '' " + sh_join(
        ["-C", f"pyinfra-backup@{host.name}", "-f", BACKUP_KEY]
    )


def _known_hosts_lines(server, server_host) -> list[str]:
    pattern = server.address if server.port == 22 else f"[{server.address}]:{server.port}"
    return [f"{pattern} {key}" for key in host_keys(server_host)]


@host_operation
def pin_server_keys():
    """Pin the SSH host keys of this host's repo servers, read from the servers themselves over
    the operator's own (pinned) connection: no trust on first use.

    Example: `pin_server_keys()` after `repo_server()`.
    """
    lines = []
    for server in servers_of(host_plan(host, inventory)).values():
        lines += _from_other_host(inventory.get_host(server.name), lambda server_host: _known_hosts_lines(server, server_host))
    content = "".join(line + "\n" for line in sorted(lines))
    if client_state(host).known_hosts.strip() == content.strip():
        host.noop(f"{len(lines)} server host keys pinned in {KNOWN_HOSTS}")
        return
    forget(host)
    yield f"install -d -m 0700 {os.path.dirname(KNOWN_HOSTS)} && " + atomic_write(KNOWN_HOSTS, content)


# --- repo lifecycle -------------------------------------------------------------------------


@host_operation
def init(job: str, unless_create_will: bool = False):
    """Initialise the job's repo with its encryption mode when it does not exist (`doInit`).
    With `unless_create_will`, a host with no archive on record whose create runs next leaves it to
    `create`, which initialises the repo only if borg finds none: a new host's first run then opens
    its repo once, not twice (`tasks.backup.run` does this).

    Example: `init(job="system")`.
    """
    planned = _job(job)
    if planned is None:
        return
    recorded = client_state(host).records[job].last_archive
    if recorded:
        host.noop(f"{job}: repo exists: this host made {recorded[0]} in it")
        return
    if unless_create_will and planned.job.do_init and _not_due(planned) is None:
        host.noop(f"{job}: no archive on record: create initialises the repo if borg finds none")
        return
    listing = _readable_listing(job)
    if listing.exists:
        host.noop(f"{job}: repo exists ({listing.encryption}, id {listing.repo_id[:12]})")
        return
    if not planned.job.do_init:
        raise JobError(job, f"repo {planned.job.repo} does not exist and doInit is false")
    forget(host)
    env = borg_env(planned.job, planned.location)
    yield with_env(env, init_argv(planned.job, planned.location))


def _not_due(planned) -> str | None:
    """Why the job's create has nothing to do now, or None when it is due (or forced)."""
    job = planned.job.name
    if _forced(job):
        return None
    if not planned.job.start_at:
        return f"{job}: startAt is empty: runs only with backup_force"
    records = client_state(host).records[job]
    if records.unreadable:
        return None
    last = records.last_archive
    schedule = Schedule.parse(list(planned.job.start_at))
    now = _now()
    if last and schedule.due_state(last[1], now) == "fresh":
        return (f"{job}: not due: last archive {last[0]} made {_ago(last[1])}; "
                f"next after {schedule.next(now):%Y-%m-%d %H:%M} UTC")
    return None


@host_operation
def create(job: str):
    """`borg create` when the job is due by `startAt` (or forced with `backup_force`). Due is decided
    from the host's record of its last archive (pyinfra_backup/records.py), so a run with nothing
    due reads no repo; `facts.borg.BackupFreshness` and `deploys/verify.py` read the repos themselves.

    Example: `create(job="system")`; force with `pyinfra ... --data backup_force=system`.
    """
    planned = _job(job)
    if planned is None:
        return
    reason = _not_due(planned)
    if reason:
        host.noop(reason)
        return
    state = client_state(host)
    if state.records[job].unreadable:
        host.log_styled(f"{host.name}: job {job}: {unknown_reason(job, state.records[job])}", fg="yellow",
                        log_func=logger.warning)
    forget(host)
    env = borg_env(planned.job, planned.location)
    run = with_env(env, create_argv(planned.job, planned.job.base_name(state.hostname), planned.location.url, _lock_wait()))
    data = DataSpec.of_host(job, host.data)
    if data:  # postgresqlDatabases, volumes: dumped and looked up first, in the same command
        run = create_script(data, run)
    first = not state.records[job].last_archive and planned.job.do_init
    init_if_missing = with_env(env, init_argv(planned.job, planned.location)) if first else None  # (dumps again, once)
    _created().add(job)
    ping_url = (host.data.get("monitoring") or {}).get("ping_url")
    if ping_url:
        yield FunctionCommand(_ping, (ping_url, "start", None), {})
    yield create_command(job, run, accept_warnings=not planned.job.fail_on_warnings, init_if_missing=init_if_missing)


def _run_operator_borg(state, host, planned, location, argvs: list[list[str]]) -> bool:  # noqa: F811 (pyinfra passes `host`)
    """Run borg on the operator's machine with the operator's key (full access); see tasks/operator.py."""
    try:
        secret = operator.secret(host, planned)
        for argv in argvs:
            operator.run_borg(planned, location, argv, secret)
    except operator.OperatorError as error:
        host.log_styled(str(error), fg="red", log_func=logger.error)
        return False
    finally:
        forget(host)
    return True


# --- the archive ledger (pyinfra_backup/ledger.py): no full-access prune after a client's delete ----


def _ledger_of(planned, error=None) -> ledger.Ledger:
    try:
        return ledger_store.load(planned.server.name, host.name)
    except ledger_store.LedgerError as problem:
        raise (error or JobError)(planned.job.name, str(problem)) from None


def _keep_ledger(state, host, server: str, repo: str, kept: ledger.Ledger, note: str | None = None) -> bool:  # noqa: F811
    try:
        ledger_store.save(server, repo, kept)
    except ledger_store.LedgerError as error:
        host.log_styled(str(error), fg="red", log_func=logger.error)
        return False
    if note:
        host.log_styled(note, fg="yellow", log_func=logger.warning)
    return True


def _tampered(planned, recorded: ledger.Ledger, found: ledger.Tampering) -> str:
    job, server = planned.job.name, planned.server.name
    return (f"the repo was tampered with (found {found.found}): {found.message()}. No prune or compact ran; "
            f"maintenance of this repo stays stopped. Bring the archives back: `tasks.borg.rollback repo={host.name} "
            f"before=<a time before the tampering; last clean listing {recorded.listed_at}> --limit {server}`, "
            f"`tasks.borg.forget_repo_state job={job} --limit {host.name}`, then "
            f"`tasks.borg.acknowledge_tampering job={job} --limit {host.name}`")


class _AckError(HostError):
    def __init__(self, job: str, message: str):
        super().__init__(f"{host.name}: job {job}: {message}")


def _operator_listing(planned, location, error=JobError):
    """The repo as the operator's own borg lists it (a client cannot forge it)."""
    try:
        listing = operator.listing(host, planned, location)
    except operator.OperatorError as problem:
        raise error(planned.job.name, str(problem)) from None
    if listing.error or not listing.exists:
        raise error(planned.job.name, f"cannot read repo with the operator's key: {listing.error or 'no repo'}")
    return listing


def operator_reach_up_front() -> None:
    """Before any host changes (at deploy load, after the fleet's read): this machine reaches, with the
    operator's key, the server of every job whose create is due now and whose prune runs here. A failure
    is said now, once per job; the job still backs up (its host's key can), its prune then fails with it."""
    for planned in host_plan(host, inventory):
        if planned.server is not None and planned.job.keep and planned.job.name not in _unreached() \
                and _not_due(planned) is None and not _operator_key_pending(planned):
            error = operator.reach(planned, operator.location(host, planned))
            if error:
                _unreached()[planned.job.name] = error
                logger.error(f"{host.name}: job {planned.job.name}: {error} (its backup is still made; its prune fails)")


def _operator_key_pending(planned) -> bool:
    """The server, as read at the start of this run, lacks an operatorKeys entry that its `repo_server`
    step installs in this same run (a new fleet's first run): asked now, the server would refuse a key
    it is about to accept. The prune, later in the run, then says for itself whether it got in."""
    state = server_state_read(inventory.get_host(planned.server.name))
    installed = "\n".join(state.authorized_keys.values()) if state else ""
    return state is not None and any(key.split()[1] not in installed for key in planned.server.operator_keys)


def _unreached() -> dict[str, str]:
    """Jobs of this host whose repo server this machine could not reach with the operator's key: why."""
    if not hasattr(host, "_pyinfra_backup_unreached"):
        host._pyinfra_backup_unreached = {}
    return host._pyinfra_backup_unreached


def _prune_with_ledger(planned, base: str, recorded: ledger.Ledger):
    """Prune + compact of a fleet repo with the operator's key, only after the operator's listing
    matched the archive ledger; the ledger is written before borg runs (our deletions are ours)."""
    job, server, now = planned.job.name, planned.server.name, _now()
    if job in _unreached():
        raise JobError(job, _unreached()[job])
    location = operator.location(host, planned)
    listing = _operator_listing(planned, location)
    found = ledger.compare(recorded, listing.archives, listing.repo_id, now)
    if found:
        yield FunctionCommand(_keep_ledger, (server, host.name, ledger.mark_tampered(recorded, found)), {})
        raise JobError(job, _tampered(planned, recorded, found))
    archives = listing.prune_candidates(planned.job, base)
    doomed = to_prune(archives, planned.job.keep, now)
    seen = ledger.observe(recorded, listing.archives, listing.repo_id, now, pruned=[a.name for a in doomed])
    yield FunctionCommand(_keep_ledger, (server, host.name, seen), {})
    if not doomed:
        host.noop(f"{job}: nothing to prune ({len(archives)} archives within prune.keep; ledger: {len(seen.archives)})")
        return
    wait = _lock_wait()
    argvs = [prune_argv(planned.job, base, location.url, wait), compact_argv(planned.job, location.url, wait)]
    yield FunctionCommand(_run_operator_borg, (planned, location, argvs), {})


@host_operation
def prune(job: str):
    """`borg prune` with `prune.keep` on this job's archives only, then `borg compact`, after a create
    of this run (or when forced), only when borg would delete something. Repos on fleet servers are
    listed and pruned with the operator's key (`borgbackup.operatorIdentity`), never the host's
    append-only key, and only when that listing matches the archive ledger: a repo that lost archives
    no operator prune removed is marked tampered, and fails the host on every run until acknowledged.

    + job: the job (`borgbackup.jobs.<job>`)

    **Example:** ``prune(job="system")``
    """
    planned = _job(job)
    if planned is None:
        return
    if not planned.job.keep:
        host.noop(f"{job}: no prune.keep")
        return
    recorded = _ledger_of(planned) if planned.server is not None else None
    if recorded is not None and recorded.tampered:
        raise JobError(job, _tampered(planned, recorded, recorded.tampered))
    if job not in _created() and not _forced(job):
        host.noop(f"{job}: no new archive in this run, nothing new to prune")
        return
    base = planned.job.base_name(client_state(host).hostname)
    if recorded is not None:
        yield from _prune_with_ledger(planned, base, recorded)
        return
    archives = _readable_listing(job).prune_candidates(planned.job, base)
    doomed = to_prune(archives, planned.job.keep, _now())
    if not doomed:
        host.noop(f"{job}: nothing to prune ({len(archives)} archives within prune.keep)")
        return
    forget(host)
    env, wait = borg_env(planned.job, planned.location), _lock_wait()
    for argv in (prune_argv(planned.job, base, planned.location.url, wait), compact_argv(planned.job, planned.location.url, wait)):
        yield with_env(env, argv)


@host_operation
def acknowledge_tampering(job: str):
    """Acknowledge that the job's fleet repo was found tampered (`BackupFreshness`: `tampered`), once
    its archives are back (`rollback`, then `forget_repo_state`) or their loss is accepted: the
    operator's listing of the repo becomes the ledger's reference, recorded archives missing from it
    are kept in the ledger as lost, and prune + compact resume. Changes nothing when not tampered.

    + job: the job (`borgbackup.jobs.<job>`) whose repo was found tampered

    **Example:**

    .. code:: shell

        pyinfra -y INVENTORY tasks.borg.acknowledge_tampering job=system --limit host01
    """
    planned = _planned(job)
    if planned.server is None:
        raise _AckError(job, "its repo is not on a fleet repo server: it has no archive ledger")
    recorded = _ledger_of(planned, _AckError)
    if recorded.tampered is None:
        host.noop(f"{job}: the repo is not marked tampered")
        return
    listing = _operator_listing(planned, operator.location(host, planned), _AckError)
    acked = ledger.acknowledge(recorded, listing.archives, listing.repo_id, _now())
    lost = acked.acknowledged[-1]["lost"]
    note = f"{job}: tampering acknowledged; " + (f"recorded as lost: {', '.join(lost)}" if lost else "no archive lost")
    yield FunctionCommand(_keep_ledger, (planned.server.name, host.name, acked, note), {})


@host_operation
def check(job: str):
    """`borg check` (with `--verify-data` when `checks.verifyData`) when the last successful
    check is older than `checks.frequency`, or the last check failed (a corrupt repo keeps
    failing the host until a check passes); remembers when it passed.

    Example: `check(job="system")`; force with `--data backup_force_check=true` (or a job name).
    """
    planned = _job(job)
    if planned is None:
        return
    records = client_at_start(host).records[job]  # this run's create (before) leaves them as they were
    if not _forced(job, "backup_force_check") and not (records.check and not records.check.ok):
        if not planned.job.check_frequency:
            host.noop(f"{job}: no checks.frequency")
            return
        last = records.check_ok
        if last and _now() - last < parse_interval(planned.job.check_frequency):
            host.noop(f"{job}: checked {_ago(last)}, every {planned.job.check_frequency}")
            return
    forget(host)
    run = with_env(borg_env(planned.job, planned.location), check_argv(planned.job, planned.location.url, _lock_wait()))
    yield check_command(job, run)


def _failures(records) -> list[str]:
    reasons = []
    for job, record in sorted(records.items()):
        if record.attempt and not record.attempt.ok:
            lines = record.attempt.error.splitlines() or [f"exit status {record.attempt.rc}"]
            if lines[0].startswith(f"{host.name}: "):  # a JobError's own message, already explained: as it is
                reasons.append(" ".join(" ".join(lines)[len(host.name) + 2:].split()))
            else:
                reasons.append(f"job {job}: {explain_errors(lines)}")
        if record.check and not record.check.ok:
            reasons.append(f"job {job}: borg check failed (exit status {record.check.rc})")
    return reasons


def _textfile(state) -> str:
    jobs = {}
    listings = repo_listings(host)
    for planned in host_plan(host, inventory):
        listing = listings[planned.job.name]
        base = planned.job.base_name(state.hostname)
        quota = planned.server.repo_for(host.name).get("quota") if planned.server else None
        jobs[planned.job.name] = job_metrics_from_records(
            state.records[planned.job.name],
            archives=len(listing.job_archives(base)) if listing.exists else None,
            start_at=list(planned.job.start_at), quota=quota,
            tampered=None if planned.server is None or not planned.job.keep else tampering(planned, host.name) is not None,
        )
    return render_textfile(host.name, jobs)


def _ping(state, host, url: str, kind: str, excerpt: str | None) -> bool:  # noqa: F811 (pyinfra passes `host`)
    warning = ping(url, kind, excerpt)
    if warning:
        host.log_styled(f"warning: {warning}", fg="yellow", log_func=logger.warning)
    return True  # a failed ping never fails the backup


@host_operation
def outcome():
    """The end of a host's backup run: writes the node_exporter textfile (`monitoring.textfile_dir`)
    when the jobs' records changed, pings `monitoring.ping_url` (success or /fail with the reasons)
    when a backup ran, and fails the host when any of its job steps failed in this run (inside
    `tasks.backup.run`, or as separate operations run with `_ignore_errors`), naming each failed job and why.

    Example: `outcome()` after every job's steps.
    """
    monitoring = host.data.get("monitoring") or {}
    changed = False
    results = ctx_state.get_results_for_host(host)
    steps = getattr(host, "_pyinfra_backup_step_failures", [])
    failed = bool(results.ignored_error_ops or failed_jobs() or steps)
    path = textfile_path(host)
    state = client_state(host) if path or failed else None  # read again only when needed (after a create)
    if path and (state.textfile is None or failed or changed_in_run(host)):  # else nothing new to tell
        text = _textfile(state)
        if state.textfile != text:
            changed = True
            yield f"mkdir -p {sh_join([os.path.dirname(path)])} && " + atomic_write(path, text)
    reasons = _failures(state.records) + steps if failed else []
    if monitoring.get("ping_url") and (failed or _created()):
        changed = True
        excerpt = "\n".join(reasons) if failed else None
        yield FunctionCommand(_ping, (monitoring["ping_url"], "fail" if failed else "success", excerpt), {})
    if failed:
        raise HostError(f"{host.name}: " + ("; ".join(reasons) or "a backup step failed (see above)"))
    if not changed:
        host.noop("every job step succeeded or had nothing to do; metrics unchanged")


def _created() -> set[str]:
    """Jobs of this host whose create ran in this run."""
    if not hasattr(host, "_pyinfra_backup_created"):
        host._pyinfra_backup_created = set()
    return host._pyinfra_backup_created


def archive_to_restore(job: str, archive: str = "latest"):
    """(planned job, archive name): the job's latest archive or the one named, from its repo."""
    planned = _planned(job)
    listing = _readable_listing(job)
    archives = listing.job_archives(planned.job.base_name(client_state(host).hostname))
    if not archives:
        raise HostError(f"{host.name}: job {job}: no archive to restore from")
    names = [a.name for a in archives]
    name = names[-1] if archive == "latest" else archive
    if name not in names:
        raise HostError(f"{host.name}: job {job}: no archive {archive!r} (latest: {names[-1]})")
    return planned, name


@host_operation
def restore(job: str, target: str, archive: str = "latest", overwrite: bool = False, paths: list[str] | None = None):
    """Extract an archive of the job (default: its latest) into `target`, with owners and modes.
    Refuses a non-empty target unless `overwrite=True`. Restoring the same archive (and paths) into the
    same target again changes nothing while the restored files are as it left them; one changed since
    (e.g. broken again after an in-place restore) is restored again.

    + job: the job (`borgbackup.jobs.<job>`)
    + target: absolute directory; archive paths land under it (`target=/` restores in place)
    + archive: an archive name, or `latest`
    + overwrite: replace files of a non-empty target
    + paths: only these archive paths (a list, or `a,b`; `/etc/motd` = `etc/motd`)

    **Example:** ``pyinfra INVENTORY tasks.borg.restore job=system target=/ paths=/etc/motd overwrite=true``
    """
    if not target.startswith("/"):
        raise HostError(f"{host.name}: restore target must be an absolute path, got {target!r}")
    planned, name = archive_to_restore(job, archive)
    paths = archive_paths(paths)
    key, roots = RestoreTarget.key(target, paths), restored_roots(target, paths, planned.job.paths)
    current = host.get_fact(RestoreTarget, path=target, key=key, roots=roots)
    if current.entries and current.restored == name and current.unchanged:
        host.noop(f"{job}: {name} already restored into {target}, its files unchanged since")
        return
    if current.entries and not overwrite:
        since = f" (files restored from {name} changed since)" if current.restored == name else ""
        raise HostError(f"{host.name}: restore target {target} is not empty ({current.entries} entries){since}: "
                        "refusing to overwrite; pass overwrite=True to replace its files")
    run = with_env(borg_env(planned.job, planned.location), extract_argv(planned.job, planned.location.url, name, paths))
    mark = write_mark(RestoreTarget.marker(key), name, roots)
    yield f"mkdir -p {sh_join([target])} && cd {sh_join([target])} && {run} && {mark}"


# --- append-only rollback -------------------------------------------------------------------


@host_operation
def rollback(repo: str, transaction: int | None = None, before: str | None = None, lock_wait: int | None = None):
    """Roll an append-only repo back to a transaction (undo a delete or prune made through an
    append-only key): the files written after it are moved, under borg's own lock, to
    `<path>.rolled-back/<transaction>-<UTC time>/` (nothing is deleted); when `borg check
    --repository-only` then fails, they go back and the host fails. Clients then need `forget_repo_state`.

    + repo: the client whose repo on this server is rolled back
    + transaction: roll back to this transaction of the repo's log; or
    + before: to the last transaction committed before this ISO-8601 UTC time
    + lock_wait: seconds to wait for a live borg's lock (default `borgbackup.lockWait`, 60)

    Example: `pyinfra -y INVENTORY tasks.borg.rollback repo=host01 before=2026-11-27T12:00:00Z --limit backup`.
    """
    server = fleet_servers(inventory).get(host.name)
    if server is None:
        raise HostError(f"{host.name}: not a repo server (no borgbackup.repos)")
    spec = server.repo_for(repo)
    files = host.get_fact(BorgRepoFiles, path=spec["path"])
    try:
        point = rollback_point(files.transactions, None if transaction is None else int(transaction), before)
    except (RollbackError, ValueError) as error:
        raise HostError(f"{host.name}: rollback of {repo}: {error}; nothing was changed") from None
    moves = files_after(point, files.segments, files.index_files)
    if not moves:
        host.noop(f"{repo}: nothing was written after transaction {point}")
        return
    wait = _lock_wait() if lock_wait is None else int(lock_wait)
    yield explained(rollback_script(spec["path"], spec["user"], quarantine_dir(spec["path"], point, _now()), moves, wait),
                    "rollback: ")


@host_operation
def forget_repo_state(job: str):
    """Forget what this host's borg remembers of the job's repo (security dir and cache), and for a
    fleet repo what the operator's borg here remembers of it (prune, compact and the ledger's listing
    use it), so that both accept a repo rolled back to an older state. Reads the repo id from the repo.

    Example: `pyinfra INVENTORY tasks.borg.forget_repo_state job=system --limit host01`.
    """
    planned = _planned(job)
    if planned.server is not None:
        path = planned.server.repo_for(host.name)["path"]
        files = _from_other_host(inventory.get_host(planned.server.name),
                                 lambda server_host: server_host.get_fact(BorgRepoFiles, path=path))
    else:
        files = host.get_fact(BorgRepoFiles, path=planned.job.repo)
    if not files.repo_id:
        raise HostError(f"{host.name}: job {job}: cannot read the repo id")
    home = host.get_fact(Home)
    remembered = [
        path for path in (f"{home}/.config/borg/security/{files.repo_id}", f"{home}/.cache/borg/{files.repo_id}")
        if host.get_fact(Directory, path=path)
    ]
    here = operator.remembered(files.repo_id) if planned.server is not None else []
    if not remembered and not here:
        host.noop(f"{job}: nothing remembered of repo {files.repo_id[:12]}")
        return
    forget(host)
    if remembered:
        yield sh_join(["rm", "-rf", *remembered])
    if here:
        yield FunctionCommand(_forget_here, (here,), {})


def _forget_here(state, host, paths: list[str]) -> bool:  # noqa: F811 (pyinfra passes `host`)
    for path in paths:
        shutil.rmtree(path)
    return True
