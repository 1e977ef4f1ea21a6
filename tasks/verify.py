"""Verifying backups: restore drills, freshness assertions and the host's verdict.

These operations are checks: they change nothing on the host but a drill's scratch directory
(removed when the drill ends) and the job's `last-drill` record. deploys/verify.py runs them
after `tasks.borg.check` with `_ignore_errors`, and `outcome()` fails the host at the end,
naming every job and check that failed. Also usable alone:

    pyinfra -y INVENTORY tasks.verify.drill job=system files=200 --limit host01
"""

from __future__ import annotations

from datetime import datetime, timezone

from pyinfra import host, inventory, logger
from pyinfra import state as ctx_state
from pyinfra.api import FunctionCommand

from facts.borg import client_state, freshness as job_freshness, host_plan, repo_listings
from tasks.borg import _lock_wait, _planned
from tasks.common import HostError, host_operation, run_in_operation
from pyinfra_backup.borg import archive_glob, explain_error
from pyinfra_backup.drill import drill_script, newest_archive, parse_drill
from pyinfra_backup.records import job_dir
from pyinfra_backup.report import format_age
from pyinfra_backup.state import state_glob


def _failures(host) -> list[str]:
    """What failed in this run's verify steps on this host (kept on the host object for the run)."""
    if not hasattr(host, "_pyinfra_backup_verify_failures"):
        host._pyinfra_backup_verify_failures = []
    return host._pyinfra_backup_verify_failures


class VerifyError(HostError):
    """A verify step failed on this host: remembered for `outcome()`, which names every one."""

    def __init__(self, message: str):
        _failures(host).append(message)
        super().__init__(f"{host.name}: {message}")


def _run_drill(state, host, what: str, script: str) -> bool:  # noqa: F811 (pyinfra passes `host`)
    _, output = run_in_operation(state, host, script)  # the report says how it went
    report = parse_drill(output.stdout_lines)
    if report.error:
        report.error = explain_error(report.error)
    elif not report.complete:
        report.error = (output.stderr_lines or ["the drill script stopped"])[-1]
    if not report.failed:
        host.log_styled(f"{what}: {report.summary()}", log_func=logger.info)
        return True
    message = f"{what}: {report.summary()}"
    _failures(host).append(message)
    host.log_styled(f"{host.name}: {message}", fg="red", log_func=logger.error)
    return False


@host_operation
def drill(job: str, files: int | None = None, max_bytes: int | None = None, state_archive: bool = False):
    """Restore drill of the job's newest archive (with `state_archive`: its newest state archive, see
    tasks/state.py): a pseudo-random sample of its regular files (`files`, `max_bytes`; default
    `checks.drillFiles`, `checks.drillMaxBytes`) is extracted into a 0700 scratch directory on
    the host and compared (SHA-256) with the live files. A file that differs although its size
    and mtime match the archive fails the host; one that changed since the archive, or is gone,
    is skipped.

    Example: `drill(job="system")`, `drill(job="system", state_archive=True)`.
    """
    planned = _planned(job)
    count = planned.job.drill_files if files is None else int(files)
    if count <= 0:
        host.noop(f"{job}: checks.drillFiles is 0: no restore drill")
        return
    budget = planned.job.drill_max_bytes if max_bytes is None else int(max_bytes)
    base = planned.job.base_name(client_state(host).hostname)
    state = state_archive in (True, "true")  # `state_archive=true` on the command line is a string
    glob = state_glob(base) if state else archive_glob(base)
    what = f"job {job}" + (" state archive" if state else "")
    listing = repo_listings(host)[job]
    if listing.error:
        raise VerifyError(f"{what}: drill failed: cannot read the repo: {listing.error}")
    archive = newest_archive(listing, glob)
    if archive is None:
        raise VerifyError(f"{what}: drill failed: no archive matching {glob}: nothing to restore from")
    record = f"{job_dir(job)}/{'last-state-drill' if state else 'last-drill'}"
    script = drill_script(planned.job, planned.location, archive.name, count, budget, record, _lock_wait())
    yield FunctionCommand(_run_drill, (what, script), {})


def _problem(job: str, entry: dict) -> str | None:
    status = entry["status"]
    if status == "error":
        return f"job {job}: the repo is in error: {entry['error']}"
    if status == "tampered":
        return f"job {job}: the repo was tampered with: {entry['error']}"
    if status == "missing":
        return f"job {job}: no archive of this job in {entry['repo']}"
    if status == "stale":
        return (f"job {job}: stale: last archive {entry['last_archive']} made {format_age(entry['age_seconds'])} "
                "ago, before the startAt event preceding the last one")
    return None


@host_operation
def freshness():
    """Fail the host when a job is stale, missing or in error (as `facts.borg.BackupFreshness` says,
    from this run's listing of the repos, shared with the drills; a repo whose last `borg check`
    failed is in error). A job that is only due (no archive since the last startAt event, one
    since the event before) passes with a warning.

    Example: `freshness()` after the checks and drills.
    """
    state, listings, now = client_state(host), repo_listings(host), datetime.now(timezone.utc)
    jobs = {p.job.name: job_freshness(p, state, listings[p.job.name], now) for p in host_plan(host, inventory)}
    problems = [problem for job, entry in sorted(jobs.items()) if (problem := _problem(job, entry))]
    for job, entry in sorted(jobs.items()):
        if entry["status"] == "due":
            host.log_styled(f"warning: job {job}: due: last archive {entry['last_archive']} made "
                            f"{format_age(entry['age_seconds'])} ago, before the last startAt event",
                            fg="yellow", log_func=logger.warning)
    if problems:
        raise VerifyError("; ".join(problems))
    host.noop(", ".join(f"{job}: {entry['status']}" for job, entry in sorted(jobs.items())))


@host_operation
def outcome():
    """The end of a host's verify run: fails the host when any step failed, naming each job
    and what failed (a check, a drill, freshness).

    Example: `outcome()` after every step.
    """
    failed = ctx_state.get_results_for_host(host).ignored_error_ops
    reasons = list(dict.fromkeys(_failures(host)))
    if reasons or failed:
        raise HostError(f"{host.name}: verify failed: " + "; ".join(reasons or ["a step failed (see above)"]))
    host.noop("every check, drill and freshness assertion passed")
