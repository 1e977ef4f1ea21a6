"""Fleet freshness report: one row per host and job, from one remote command per host.

    python -m pyinfra_backup.report INVENTORY [--json]

Run from the project root (like pyinfra: `facts.*` and the inventory's imports resolve from the
working directory). Each host is connected over pyinfra's own connectors and read once with
`facts.borg.BackupFreshness`; hosts are read in parallel.

Table columns: host, job, last archive, age, status (fresh | due | stale | missing | unknown | error | tampered, or
`unreachable` for a host that could not be read), last attempt (how long ago a run last tried the job's create,
and `failed` when it failed; `-` when none is recorded), size (original / deduplicated size of the last
archive, when the fact gives them). A host without jobs shows one row with job `-`. Reasons for
errors follow the table, then the last attempt per host (a scheduler that stopped shows there: no attempt
since its jobs became due), then a one-line summary.

`--json` prints one object to stdout (logs go to stderr)::

    {"ok": bool,
     "hosts": {"<host>": {"reachable": bool, "error": str | null,
                          "last_attempt": <ISO 8601 UTC of the newest attempt of its jobs> | null,
                          "last_attempt_age_seconds": int | null,
                          "jobs": {"<job>": <the fact's entry: repo, last_archive, last_time,
                                   age_seconds, due, status, error[, original_size,
                                   deduplicated_size], last_attempt, last_attempt_age_seconds,
                                   last_attempt_ok>}}}}

Exit status: 0 when the inventory is valid (as every deploy checks it), has at least one job, every host was
read and every job is fresh; 1 otherwise (`--tolerate due,missing` accepts those statuses too: a job waiting for
its next run, a job that never ran); 2 when the inventory cannot be loaded or the arguments are wrong. A cron job
watching the report never stays green while nothing is backed up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence

FAILING = frozenset({"stale", "error", "tampered"})
STATUSES = ("fresh", "due", "stale", "missing", "unknown", "error", "tampered")  # unknown: unreadable records


# ----------------------------------------------------------------------------- pure formatting

def format_age(seconds: float | None) -> str:
    """`45s`, `12m`, `1h05m`, `3d04h`; `-` when unknown."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 0:
        return "in the future"
    if seconds < 60:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 3600:
        return f"{minutes}m"
    if seconds < 86400:
        return f"{hours}h{minutes % 60:02d}m"
    return f"{days}d{hours % 24:02d}h"


def format_bytes(size: int | float | None) -> str:
    """Decimal units, as borg prints sizes: `568 B`, `1.23 MB`, `4.00 GB`; `-` when unknown."""
    if size is None:
        return "-"
    size = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(size) < 1000 or unit == "PB":
            return f"{int(size)} B" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def format_size(entry: Mapping) -> str:
    original, dedup = entry.get("original_size"), entry.get("deduplicated_size")
    if original is None and dedup is None:
        return "-"
    return f"{format_bytes(original)} / {format_bytes(dedup)}"


def format_attempt(entry: Mapping) -> str:
    """`12m`, `3d04h failed`; `-` when no attempt is recorded."""
    if entry.get("last_attempt_age_seconds") is None:
        return "-"
    return format_age(entry["last_attempt_age_seconds"]) + ("" if entry.get("last_attempt_ok", True) else " failed")


def last_attempt(jobs: Mapping[str, Mapping]) -> tuple[str | None, int | None]:
    """(time, age in seconds) of the newest attempt recorded among a host's jobs; (None, None) when none."""
    attempts = [(job["last_attempt"], job.get("last_attempt_age_seconds")) for job in jobs.values()
                if job.get("last_attempt")]
    return max(attempts, key=lambda attempt: attempt[0]) if attempts else (None, None)


def is_ok(report: Mapping, tolerated: frozenset[str] = frozenset()) -> bool:
    """Valid data, at least one job, every host read, every job fresh (or of a `tolerated` status)."""
    accepted = {"fresh"} | (tolerated - FAILING)
    hosts = report["hosts"].values()
    return not report.get("invalid") and any(host["jobs"] for host in hosts) and all(
        host["reachable"] and host.get("error") is None
        and all(job.get("status") in accepted for job in host["jobs"].values())
        for host in hosts
    )


def render_table(report: Mapping) -> str:
    """The report as an aligned text table, reasons and a summary line after it."""
    header = ("HOST", "JOB", "LAST ARCHIVE", "AGE", "STATUS", "LAST ATTEMPT", "SIZE (ORIG / DEDUP)")
    rows, notes, attempts = [], [], []
    counts: Counter = Counter()
    unread = 0
    for name, host in report["hosts"].items():
        if not host["reachable"] or host.get("error"):
            status = "unreachable" if not host["reachable"] else "error"
            rows.append((name, "-", "-", "-", status, "-", "-"))
            notes.append(f"{name}: {status}: {host.get('error') or 'unknown reason'}")
            unread += 1
            continue
        if not host["jobs"]:
            rows.append((name, "-", "(no jobs)", "-", "-", "-", "-"))
        else:
            when, age = last_attempt(host["jobs"])
            attempts.append(f"{name} {format_age(age)} ago ({when})" if when else f"{name} never")
        for job, entry in sorted(host["jobs"].items()):
            status = entry.get("status") or "error"
            counts[status] += 1
            rows.append((name, job, entry.get("last_archive") or "-", format_age(entry.get("age_seconds")),
                         status, format_attempt(entry), format_size(entry)))
            if entry.get("error"):
                notes.append(f"{name} {job}: {entry['error']}")
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in (header, *rows)]
    summary = f"{len(report['hosts'])} hosts, {sum(counts.values())} jobs: " + ", ".join(
        f"{counts[s]} {s}" for s in STATUSES if counts[s] or s not in ("tampered", "unknown"))  # named when they occur
    if unread:
        summary += f"; {unread} hosts not read"
    if not any(host["jobs"] for host in report["hosts"].values()):
        notes.append("no backup job in the inventory: nothing is backed up")
    if report.get("invalid"):
        notes.insert(0, report["invalid"])
    if attempts:
        notes.append("last attempt per host: " + ", ".join(attempts))
    summary += ": OK" if report.get("ok", is_ok(report)) else ": NOT OK"
    return "\n".join([*lines, *([""] + notes if notes else []), "", summary]) + "\n"


# ----------------------------------------------------------------------------- reading the fleet

def _read_host(state, host) -> dict:
    """Connect (if needed) and run the one BackupFreshness command on `host`."""
    from pyinfra.api.exceptions import ConnectError
    from pyinfra.api.facts import get_fact
    from pyinfra.context import ctx_host, ctx_state

    from facts.borg import BackupFreshness

    try:
        host.connect(show_errors=False, raise_exceptions=True)
    except ConnectError as e:
        return {"reachable": False, "error": str(e.args[0] if e.args else e), "jobs": {}}
    except Exception as e:  # noqa: BLE001 - one host's problem is that host's row
        return {"reachable": False, "error": f"{type(e).__name__}: {e}", "jobs": {}}
    try:
        with ctx_state.use(state), ctx_host.use(host):
            jobs = get_fact(state, host, BackupFreshness, apply_failed_hosts=False)
    except Exception as e:  # noqa: BLE001
        return {"reachable": True, "error": f"reading freshness failed: {type(e).__name__}: {e}", "jobs": {}}
    if jobs is None:
        return {"reachable": True, "error": "reading freshness failed (the fact's command failed on the host)",
                "jobs": {}}
    return {"reachable": True, "error": None, "jobs": jobs}


def load_state(inventory: str):
    """A pyinfra State holding `inventory` (a path or anything `pyinfra INVENTORY` accepts), with
    pyinfra's context set, as `pyinfra INVENTORY` makes them; run from the project root."""
    from pyinfra.api import Config, State
    from pyinfra.context import ctx_config, ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory  # imports gevent.monkey.patch_all(), as pyinfra does

    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    state = State(check_for_changes=False)
    state.cwd = cwd
    config = Config()
    ctx_state.set(state)
    ctx_config.set(config)
    loaded = make_inventory(inventory, cwd=cwd)
    ctx_inventory.set(loaded)
    state.init(loaded, config)
    return state


def collect(inventory: str, tolerated: frozenset[str] = frozenset()) -> dict:
    """Read every host of `inventory` (a path or anything `pyinfra INVENTORY` accepts): the report dict.
    Invalid host data (what every deploy refuses) is read all the same, and named under `invalid`."""
    import gevent

    from pyinfra_backup.validate import InvalidHostData, require_valid_inventory

    state = load_state(inventory)
    try:
        require_valid_inventory(state)
        invalid = None
    except InvalidHostData as error:
        invalid = str(error)
    loaded = state.inventory
    hosts = list(loaded)
    greenlets = [state.pool.spawn(_read_host, state, host) for host in hosts]
    gevent.joinall(greenlets)
    by_host = {host.name: g.get() for host, g in zip(hosts, greenlets)}
    for read in by_host.values():
        read["last_attempt"], read["last_attempt_age_seconds"] = last_attempt(read["jobs"])
    for host in hosts:
        if host.connected:
            try:
                host.disconnect()
            except Exception:  # noqa: BLE001, S110 - closing is best effort
                pass
    report = {"hosts": by_host, **({"invalid": invalid} if invalid else {})}
    return {"ok": is_ok(report, tolerated), **report}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pyinfra_backup.report",
        description="Freshness of every backup job of every host (one remote command per host).",
        epilog="Exit status: 0 all fine; 1 invalid host data, no job at all, a job not fresh (see --tolerate) or a "
               "host unreachable; 2 bad usage.",
    )
    parser.add_argument("inventory", help="pyinfra inventory (file, host list or module), as for `pyinfra INVENTORY`")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--tolerate", default="", metavar="STATUS[,STATUS]",
                        help="statuses that do not fail the report besides fresh: due, missing")
    args = parser.parse_args(argv)
    tolerated = frozenset(filter(None, args.tolerate.split(",")))
    if not tolerated <= {"due", "missing"}:
        parser.error(f"--tolerate takes due and/or missing, got {args.tolerate!r}")
    try:
        report = collect(args.inventory, tolerated)
    except Exception as e:  # noqa: BLE001 - a bad inventory is a usage error, said in one line
        print(f"report: cannot load inventory {args.inventory}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if not report["hosts"]:
        print(f"report: inventory {args.inventory} has no hosts", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(report, indent=2, sort_keys=False) + "\n" if args.json else render_table(report))
    sys.stdout.flush()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
