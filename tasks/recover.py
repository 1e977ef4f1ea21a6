"""The steps of a recovery run, in the order deploys/recover.py runs them on each host.

Each step is idempotent (a second run reports "No changes") and is timed: `summary()` ends the
run with what came from which archive and how long each step took (the RTO). Restores go
through the operator's machine (tasks/relay.py), so a freshly installed host with no backup key
and undecryptable secrets recovers as well as a damaged one.

    pyinfra -y INVENTORY deploys/recover.py --limit web01
"""

from __future__ import annotations

import subprocess
import tempfile
import time

from pyinfra import host, inventory, logger
from pyinfra.api import FunctionCommand

from facts.borg import host_plan
from facts.git import host_config
from facts.nixos import NixosGenerations
from facts.recover import ConfigCheckout
from facts.state import StateDigest
from pyinfra_backup.borg import items_argv
from pyinfra_backup.dumps import DataSpec
from pyinfra_backup.recovery import Step, Summary, bundle_argv, checkout_script, resolve_argv
from pyinfra_backup.state import parse_archive_output
from tasks import data, escrow, nixos, operator, relay
from tasks.common import HostError, host_operation, run_as_login


def _summary() -> Summary:
    if not hasattr(host, "_pyinfra_backup_recovery"):
        host._pyinfra_backup_recovery = Summary(host.name)
    return host._pyinfra_backup_recovery


def _stop(state, host, step: Step, started: float) -> bool:  # noqa: F811 (pyinfra passes `host`)
    step.seconds = time.monotonic() - started
    return True


def timed(name: str, source: str, commands):
    """`commands` as one step of the summary: no change, done in N seconds, or FAILED."""
    started = time.monotonic()
    step = Step(name, source)
    _summary().steps.append(step)
    commands = iter(commands)
    first = next(commands, None)
    if first is None:
        step.seconds, step.result = time.monotonic() - started, "no change"
        return
    yield first
    yield from commands
    yield FunctionCommand(_stop, (step, started), {})


DATA_BY_NAME = ("pp:var/lib/pyinfra-backup/spool", "pp:var/lib/containers/storage/volumes", "pp:var/lib/docker/volumes")


def state_job() -> str | None:
    return (host.data.get("system_state") or {}).get("job")


def recover_jobs() -> list[str]:
    """`recover_jobs` (a name or a list), default every job of the host."""
    chosen = host.data.get("recover_jobs")
    jobs = sorted(((host.data.get("borgbackup") or {}).get("jobs") or {}))
    return [chosen] if isinstance(chosen, str) else list(chosen) if chosen else jobs


@host_operation
def identity():
    """(1) Host identity from the newest state archive of `system_state.job` (machine-id, SSH host
    keys, /var/lib/nixos, ...), put back in place before anything else runs on the host."""
    job = state_job()
    if job is None:
        host.noop("no system_state.job: no state archive to restore identity from")
        return
    archive = host.data.get("recover_state_archive") or "state"
    yield from timed("identity", f"{job}: {archive}", relay.restore._inner(job=job, archive=archive, overwrite=True))


@host_operation
def keys():
    """(1b) The escrowed key of each keyfile-mode job back on a host that has none (a reinstalled host
    lost `/root/.config/borg`), imported with `borg key import` from the operator's escrow (tasks/escrow.py)."""
    for job in recover_jobs():
        yield from timed(f"key {job}", f"{job}: escrow", escrow.import_key._inner(job=job))


def _operator_git(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True)


def _send_config(state, host, source: str, script: str) -> bool:  # noqa: F811 (pyinfra passes `host`)
    with tempfile.TemporaryFile() as bundle_errors:  # git's own reason, for when the bundle fails
        proc = subprocess.Popen(bundle_argv(source), stdout=subprocess.PIPE, stderr=bundle_errors)
        try:
            piped = operator.pipe_to_host(host, proc, script)
        except operator.OperatorError as error:
            piped = None
            reasons = [str(error)]
        bundle_rc = proc.wait()
        bundle_errors.seek(0)
        said = " ".join(bundle_errors.read().decode(errors="replace").split())
    if piped is not None:
        reasons = [piped.errors.strip()] if piped.status != 0 else []
    if bundle_rc != 0:  # the cause: what the host saw of a cut bundle comes second
        reasons.insert(0, f"git bundle of {source} failed (exit {bundle_rc}): {said or 'no message'}")
    if reasons:
        host.log_styled(f"config repo: {'; on the host: '.join(r for r in reasons if r)}", fg="red", log_func=logger.error)
        return False
    host.log_styled(piped.output.strip(), log_func=logger.info)
    return True


@host_operation
def config():
    """(2) The config repo (`config_repo.path` on the host) cloned from the operator's clone
    (`recover_config_source`) as a git bundle, checked out at `recover_ref` (default: the clone's HEAD)."""
    repo, source = host_config(host), host.data.get("recover_config_source")
    if repo is None or not source:
        host.noop("no config_repo or no recover_config_source: the config repo is not restored")
        return
    ref = host.data.get("recover_ref") or "HEAD"
    resolved = _operator_git(resolve_argv(source, ref))
    if resolved.returncode != 0:
        raise HostError(f"{host.name}: recover_ref: {ref!r} is not a commit of {source} "
                        f"({resolved.stderr.decode(errors='replace').strip()})")
    commit = resolved.stdout.decode().strip()
    checkout = host.get_fact(ConfigCheckout, path=repo.path)
    if checkout.head == commit:
        yield from timed("config repo", f"{ref} = {commit[:12]}", ())
        host.noop(f"{repo.path} is at {ref} ({commit[:12]})")
        return
    script = checkout_script(repo.path, commit, repo.remotes)
    yield from timed("config repo", f"{ref} = {commit[:12]}", [FunctionCommand(_send_config, (source, script), {})])


@host_operation
def system():
    """(3) On NixOS: roll back to `recover_generation`, or rebuild from the config repo
    (`nixos-rebuild switch --flake <config_repo.path>#<host>`, only when it differs). Elsewhere nothing."""
    if host.get_fact(NixosGenerations) is None:
        host.noop("not NixOS: no system to rebuild")
        return
    generation, repo = host.data.get("recover_generation"), host_config(host)
    if generation:
        yield from timed("system", f"generation {generation}", nixos.rollback._inner(generation=generation))
    elif repo is not None:
        yield from timed("system", f"flake {repo.path}", nixos.rebuild._inner(flake=repo.path))
    else:
        host.noop("NixOS without config_repo or recover_generation: the system is left as it is")


@host_operation
def job_data():
    """(4) Each job's data (`recover_jobs`, default all) from `recover_archive` (default its newest)
    into `recover_target` (default `/`, the original places; replaced files are kept aside)."""
    archive = host.data.get("recover_archive") or "latest"
    target = host.data.get("recover_target") or "/"
    for job in recover_jobs():  # dumps and volumes come back by name in step (5)
        yield from timed(f"data {job}", f"{job}: {archive}", relay.restore._inner(
            job=job, archive=archive, target=target, overwrite=True, exclude=DATA_BY_NAME))


def _archived_state(job: str, archive: str) -> tuple[str, dict]:
    """The state archive's name and items (with sha256), read with the operator's borg."""
    planned, where, secret, name = relay.operator_archive(job, archive)
    try:
        items = operator.run_borg(planned, where, items_argv(planned.job, where.url, name), secret)
    except operator.OperatorError as error:
        raise HostError(f"{host.name}: verify: {error}") from None
    return name, parse_archive_output(["::items", *items.splitlines()])[1]


@host_operation
def databases():
    """(5) Each PostgreSQL database and container volume of the recovered jobs, restored by name
    from `recover_archive` (tasks/data.py) by the host itself: identity brought its backup key back
    and the config repo its secrets, so its own passCommand works again. An existing non-empty
    database or volume is left alone (the step fails, naming it): replace it with tasks.data and
    overwrite=true."""
    archive = host.data.get("recover_archive") or "latest"
    for job in recover_jobs():
        spec = DataSpec.of_host(job, host.data)
        for database in spec.databases if spec else ():
            yield from timed(f"database {database.name}", f"{job}: {archive}",
                             data.restore_database._inner(job=job, database=database.name, archive=archive))
        for volume in spec.volumes if spec else ():
            yield from timed(f"volume {volume}", f"{job}: {archive}",
                             data.restore_volume._inner(job=job, volume=volume, archive=archive))


@host_operation
def verify():
    """(6) The host's identity files match the state archive they came from (content, owner, mode),
    and every command of `recover_checks` (e.g. `systemctl is-active sshd`) exits 0. Reads only."""
    started, problems, source = time.monotonic(), [], []
    job = state_job()
    if job and (planned := next((p for p in host_plan(host, inventory) if p.job.name == job), None)) and planned.server:
        name, archived = _archived_state(job, host.data.get("recover_state_archive") or "state")
        live = host.get_fact(StateDigest, paths=sorted("/" + path for path in archived), job=job, literal=True)
        differ = sorted(path for path, entry in archived.items() if live.entries.get(path) != entry)
        problems += [f"/{path} differs from {name}" for path in differ]
        source.append(f"{len(archived) - len(differ)}/{len(archived)} identity files = {name}")
    checks = host.data.get("recover_checks") or []
    for check in checks:
        ok, _ = run_as_login(host, check)
        if not ok:
            problems.append(f"recover_checks: `{check}` failed")
    if checks:
        source.append(f"{len(checks)} checks")
    _summary().steps.append(Step("verify", "; ".join(source) or "nothing to verify", time.monotonic() - started, "checked"))
    if problems:
        raise HostError(f"{host.name}: verify: " + "; ".join(problems))
    host.noop("verified: " + ("; ".join(source) or "no state archive, no recover_checks"))


@host_operation
def summary():
    """The end of a recovery run: each step, where it came from, how long it took; the RTO."""
    for line in _summary().lines():
        host.log_styled(line, log_func=logger.info)
    host.noop("recovery summary printed")
