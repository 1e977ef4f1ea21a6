"""borg on the operator's machine (where pyinfra runs), with the operator's full-access key.

Prune and compact of enrolled repos, and every restore relayed to a host that cannot reach its
repo itself (tasks/relay.py), run borg here. The passphrase reaches borg through an anonymous
pipe (`BORG_PASSPHRASE_FD`), never argv or the environment:

    source = location(host, planned)
    secret = passphrase(host, planned)          # recover_passCommand here, else passCommand on the host
    proc = popen_borg(planned, source, ["borg", "list", "--json", source.url], secret)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import gevent.event
from pyinfra import inventory

from pyinfra_backup.borg import Location, RepoListing, borg_env, list_argv, operator_env, parse_list, probe_argv
from pyinfra_backup import escrow_store
from pyinfra_backup.enrollment import PlannedJob, alive_interval, operator_identity, operator_location
from pyinfra_backup.escrow import EscrowError, is_keyfile
from tasks.common import login_command_line, run_as_login


class OperatorError(Exception):
    """Operator-side borg cannot go on for this host; the message says why."""


def location(host, planned: PlannedJob) -> Location:
    """The job's repo as the operator reaches it: full access with `borgbackup.operatorIdentity`,
    the server's host key checked against the operator's own known_hosts for it."""
    server_host = inventory.get_host(planned.server.name)
    data = host.data.dict()
    return operator_location(
        planned.server, host.name, operator_identity(data),
        server_host.data.get("ssh_known_hosts_file") or "~/.ssh/known_hosts", alive_interval(data),
    )


def _recover_pass_command(host, job: str) -> str | None:
    command = host.data.get("recover_passCommand")
    return command.get(job) if isinstance(command, dict) else command


def passphrase(host, planned: PlannedJob) -> bytes:
    """The job's passphrase for operator-side borg: `recover_passCommand` run on the operator's
    machine when the host data has one (a host being rebuilt cannot run its own passCommand yet),
    else the escrowed one when `borgbackup.escrow.identities` are given (recovery), else the job's
    `encryption.passCommand` run on the host. Empty for unencrypted repos."""
    job = planned.job
    if job.mode == "none":
        return b""
    local = _recover_pass_command(host, job.name)
    if local:
        proc = subprocess.run(["sh", "-c", local], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise OperatorError(f"job {job.name}: recover_passCommand failed on the operator's machine "
                                f"(exit status {proc.returncode})")
        return proc.stdout.rstrip(b"\n")
    escrowed = _escrowed(host, job.name, "pass.age")
    if escrowed is not None:
        return escrowed
    ok, output = run_as_login(host, job.pass_command)
    if not ok:
        raise OperatorError(f"job {job.name}: the passCommand failed on the host "
                            "(a host being rebuilt needs recover_passCommand)")
    return "\n".join(output.stdout_lines).encode()


def _escrowed(host, job: str, kind: str) -> bytes | None:
    """The job's escrowed key export or passphrase, when the host data names identities to decrypt it and
    the escrow holds it; None otherwise (daily runs give no identities)."""
    identities = escrow_store.identities_of(host.data.dict())
    try:
        kept = escrow_store.load(host.name, job) if identities else None
        if kept is None or (kind == "pass.age" and not kept.passphrase):
            return None
        return escrow_store.decrypt(host.name, job, kind, identities)
    except EscrowError as error:
        raise OperatorError(str(error)) from None


def _operator_has_key(repo_id: str) -> bool:
    """Whether the operator's borg finds a key file for the repo (any file of its keys dir naming it)."""
    env = operator_env(os.environ, {})
    base = env.get("BORG_BASE_DIR") or os.path.expanduser("~")
    keys = env.get("BORG_KEYS_DIR") or os.path.join(env.get("XDG_CONFIG_HOME") or f"{base}/.config", "borg", "keys")
    for name in os.listdir(keys) if os.path.isdir(keys) else ():
        with contextlib.suppress(OSError), open(os.path.join(keys, name), errors="replace") as keyfile:
            if keyfile.readline().split() == ["BORG_KEY", repo_id]:
                return True
    return False


def operator_has_key(repo_id: str) -> bool:
    return _operator_has_key(repo_id)


def ensure_key(host, planned: PlannedJob, where: Location) -> None:
    """Before the operator's first borg call of a keyfile-mode job: import the escrowed key (`borg key
    import`, on stdin) when this machine has none for the repo. Nothing without an escrow or identities."""
    try:
        kept = escrow_store.load(host.name, planned.job.name) if is_keyfile(planned.job.mode) else None
    except EscrowError as error:
        raise OperatorError(str(error)) from None
    if kept is None or _operator_has_key(kept.repo_id):
        return
    export = _escrowed(host, planned.job.name, "key.age")
    if export is None:
        raise OperatorError(f"job {planned.job.name}: this machine has no key file for repo {kept.repo_id[:12]} "
                            "(keyfile mode): give borgbackup.escrow.identities to import the escrowed one")
    import_key(planned, where, export)


def import_key(planned: PlannedJob, where: Location, export: bytes) -> None:
    """`borg key import REPO -` here, the key export on stdin: a keyfile-mode repo for the operator's borg."""
    with ssh_logged(where) as (logged, ssh_said):
        proc = popen_borg(planned, logged, ["borg", *planned.job.extra_args, "key", "import", where.url, "-"], b"",
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = proc.communicate(export)
        said = ssh_said() if proc.returncode != 0 else ""
    if proc.returncode != 0:
        reason = (err.decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise OperatorError(f"job {planned.job.name}: borg key import failed: {reason}{ssh_reason(where, said, 'key import')}")


def secret(host, planned: PlannedJob) -> bytes:
    """`passphrase`, asked once per run and job (the operator's listing, prune and compact share it);
    kept in this process's memory only."""
    if not hasattr(host, "_pyinfra_backup_secrets"):  # (on the host itself: `host` may be pyinfra's context proxy)
        host._pyinfra_backup_secrets = {}
    cache = host._pyinfra_backup_secrets
    if planned.job.name not in cache:
        cache[planned.job.name] = passphrase(host, planned)
    return cache[planned.job.name]


def listing(host, planned: PlannedJob, where: Location) -> RepoListing:
    """The job's repo as the operator's own borg lists it (full-access key): what the archive ledger
    compares, and what a client's key cannot forge (a client's own listing runs on the client)."""
    try:
        ensure_key(host, planned, where)
    except OperatorError as error:
        return RepoListing(exists=False, error=str(error))
    with ssh_logged(where) as (logged, ssh_said):
        proc = popen_borg(planned, logged, list_argv(planned.job, where), secret(host, planned),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate()
        said = ssh_said() if proc.returncode != 0 else ""
    listing = parse_list(out.decode(errors="replace"), proc.returncode, err.decode(errors="replace"))
    if listing.error:  # one line, with ssh's own words: the listing is the first step of the operator's prune
        return replace(listing, error=" ".join(listing.error.split()) + ssh_reason(where, said, "prune"))
    return listing


def remembered(repo_id: str) -> list[str]:
    """What the operator's borg remembers of a repo (security dir, cache), as borg 1.2 finds them:
    a repo rolled back to an older state is refused until they are gone."""
    env = operator_env(os.environ, {})  # the environment the operator's borg runs with: no BORG_* of the shell
    base = env.get("BORG_BASE_DIR") or os.path.expanduser("~")
    config = os.path.join(env.get("XDG_CONFIG_HOME") or f"{base}/.config", "borg")
    cache = os.path.join(env.get("XDG_CACHE_HOME") or f"{base}/.cache", "borg")
    security = f"{config}/security"
    return [path for path in (f"{security}/{repo_id}", f"{cache}/{repo_id}") if os.path.isdir(path)]


def popen_borg(planned: PlannedJob, where: Location, argv: list[str], secret: bytes, **popen) -> subprocess.Popen:
    """Start borg here with the job's environment (no `BORG_*` of the operator's shell: `operator_env`)
    and the passphrase on an anonymous pipe."""
    read_end, write_end = os.pipe()
    env = operator_env(os.environ, borg_env(planned.job, where, {"BORG_PASSPHRASE_FD": str(read_end)}))
    try:
        proc = subprocess.Popen(argv, env=env, pass_fds=(read_end,), **popen)
    finally:
        os.close(read_end)
    with os.fdopen(write_end, "wb") as pipe:
        pipe.write(secret)
    return proc


@contextmanager
def ssh_logged(where: Location):
    """`where` with its ssh writing its own messages to a temporary file (`ssh -E`): borg reports a
    refused key or an unreachable host only as "Connection closed by remote host". Yields
    (location, read) where `read()` gives ssh's last messages."""
    if not where.rsh:
        yield where, lambda: ""
        return
    fd, path = tempfile.mkstemp(prefix="pyinfra-backup-ssh-", suffix=".log")
    os.close(fd)
    try:
        def read() -> str:
            with open(path, errors="replace") as log:
                return " ".join(line.strip() for line in log.read().splitlines()[-2:] if line.strip())
        yield replace(where, rsh=f"{where.rsh} -E {shlex.quote(path)}"), read
    finally:
        os.unlink(path)


def reach(planned: PlannedJob, where: Location) -> str | None:
    """Why this machine cannot reach the job's repo server with the operator's key (with ssh's own words), or
    None: asked once per run and server login (one ssh login, 0.1-0.3 s), the answer shared by every host."""
    from pyinfra.context import ctx_state

    answers = ctx_state.get().__dict__.setdefault("_pyinfra_backup_reach", {})
    login = (where.rsh, where.url.split("/")[2])
    if login not in answers:
        answers[login] = gevent.event.AsyncResult()
        fd, log = tempfile.mkstemp(prefix="pyinfra-backup-ssh-", suffix=".log")
        os.close(fd)
        try:
            proc = subprocess.run(probe_argv(where, log), stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            with open(log, errors="replace") as said:
                words = " ".join(line.strip() for line in said.read().splitlines()[-2:] if line.strip())
        except subprocess.TimeoutExpired:
            proc, words = None, "no answer in 60 s"
        finally:
            os.unlink(log)
        answers[login].set(None if proc is not None and proc.returncode == 0 else
                           (words or f"exit status {proc.returncode}").rstrip("."))
    said = answers[login].get()
    return said and (f"prune of job {planned.job.name} runs on this machine with {where.identity} "
                     f"(borgbackup.operatorIdentity): ssh: {said}; the server must list its public key in "
                     "borgbackup.operatorKeys")


def ssh_reason(where: Location, said: str, command: str) -> str:
    """What ssh said, and with which key this borg ran, for an operator-side failure."""
    if not said:
        return ""
    key = f" with key {where.identity} (borgbackup.operatorIdentity)" if where.identity else ""
    return (f"; ssh: {said} (borg {command} runs on the operator's machine{key}; the server must list its public "
            "key in borgbackup.operatorKeys)")


def run_borg(planned: PlannedJob, where: Location, argv: list[str], secret: bytes) -> str:
    """Run borg here to the end; its stdout, or OperatorError with borg's last words (and ssh's)."""
    with ssh_logged(where) as (logged, ssh_said):
        proc = popen_borg(planned, logged, argv, secret, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate()
        said = ssh_said() if proc.returncode != 0 else ""
    if proc.returncode != 0 and not (proc.returncode == 1 and not planned.job.fail_on_warnings):
        reason = (err.decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        command = next(word for word in argv[1:] if not word.startswith("-"))
        raise OperatorError(f"job {planned.job.name}: borg {command} failed: {reason}{ssh_reason(where, said, command)}")
    return out.decode(errors="replace")


@dataclass
class Piped:
    """What `pipe_to_host` saw: bytes sent and their sha256, the host script's output and exit status, seconds."""

    sent: int
    output: str
    errors: str
    status: int
    seconds: float
    sha256: str = ""


def send_to_host(host, data: bytes, script: str) -> Piped:
    """`data` (a secret held in memory here) on the stdin of `script` run on the host, over the host's own
    SSH connection: never in argv, a file or pyinfra's output."""
    started = time.monotonic()
    channel = host.connector.client.get_transport().open_session()
    channel.exec_command(login_command_line(host, script))  # with the run's sudo, as yielded commands
    channel.sendall(data)
    channel.shutdown_write()
    output = channel.makefile("rb").read().decode(errors="replace")
    errors = channel.makefile_stderr("rb").read().decode(errors="replace")
    return Piped(len(data), output, errors, channel.recv_exit_status(), time.monotonic() - started)


def pipe_to_host(host, proc: subprocess.Popen, script: str, chunk: int = 1 << 20) -> Piped:
    """Stream `proc`'s stdout (a process on this machine) into `script` run on the host over the
    host's own SSH connection (no second login, no credential on the host). Raises OperatorError
    when the connection breaks; the caller checks `proc`'s exit status and `Piped.status`."""
    started = time.monotonic()
    channel = host.connector.client.get_transport().open_session()
    channel.exec_command(login_command_line(host, script))  # with the run's sudo, as yielded commands
    sent, digest = 0, hashlib.sha256()
    try:
        while data := proc.stdout.read(chunk):
            channel.sendall(data)
            digest.update(data)
            sent += len(data)
    except OSError as error:
        proc.kill()
        raise OperatorError(f"the stream to the host broke off after {sent} bytes: {error}") from None
    finally:
        proc.stdout.close()
    channel.shutdown_write()
    output = channel.makefile("rb").read().decode(errors="replace")
    errors = channel.makefile_stderr("rb").read().decode(errors="replace")
    return Piped(sent, output, errors, channel.recv_exit_status(), time.monotonic() - started, digest.hexdigest())
