"""Rolling an append-only repo back to a transaction: the point, the files to move, the script.

What a delete or prune through an append-only key did is undone by moving the segments and index
files written after the chosen transaction out of the repo, into a fresh quarantine directory
(nothing is deleted). The move runs under borg's own repository lock (`borg.locking.Lock`, what
every borg takes), then `borg check --repository-only` runs; when it fails, every moved file goes
back and the script fails saying so.

Not `borg with-lock`: it re-writes the manifest into a new segment before running its command and
commits its in-memory index afterwards, so a move under it leaves a committed index that names
the moved segments (and the newer manifest): `borg check` then fails ("Index object count
mismatch"), measured with borg 1.2.4.

>>> parse_utc("2026-11-27T12:00:00Z").isoformat()
'2026-11-27T12:00:00+00:00'
>>> rollback_point([(5, "2026-11-27T11:59:59.9"), (9, "2026-11-27T12:00:00.5")], None, "2026-11-27T12:00:00Z")
5
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pyinfra_backup.shell import sh_join

SEGMENTS_PER_DIR = 1000  # borg 1.2's default segments_per_dir
LOCK_FAILED = 75  # exit status of LOCKED_RUN when borg's lock was not acquired
MOVE_FAILED = 3  # exit status of the move when it failed and put back what it had moved


class RollbackError(ValueError):
    """The rollback cannot be decided from what was asked: nothing is changed."""


def parse_utc(text: str) -> datetime:
    """An ISO-8601 time in UTC (`2026-11-27T12:00:00`, `...Z`, `...+00:00`, fractions allowed;
    no offset means UTC, as borg's transaction log writes it). Anything else is refused."""
    try:
        when = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise RollbackError(
            f"before={text!r}: not an ISO-8601 time (expected e.g. 2026-11-27T12:00:00 or 2026-11-27T12:00:00Z, in UTC)"
        ) from None
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    if when.utcoffset() != timedelta(0):
        raise RollbackError(f"before={text!r}: give the time in UTC (Z or +00:00), as borg's transaction log is")
    return when.astimezone(timezone.utc)


def rollback_point(transactions: list[tuple[int, str]], transaction: int | None, before: str | None) -> int:
    """The transaction to roll back to: `transaction` itself (it must be in the log), or the last
    one committed strictly before the UTC time `before`."""
    if (transaction is None) == (before is None):
        raise RollbackError("rollback needs exactly one of transaction= or before=")
    if transaction is not None:
        if int(transaction) not in {t for t, _ in transactions}:
            raise RollbackError(f"no transaction {transaction} in the repo's log")
        return int(transaction)
    limit = parse_utc(before)
    earlier = [t for t, when in transactions if parse_utc(when) < limit]
    if not earlier:
        raise RollbackError(f"no transaction committed before {limit.isoformat()}")
    return earlier[-1]


def files_after(point: int, segments: list[int], index_files: list[str]) -> list[str]:
    """Repo-relative paths of the segments and index/hints/integrity files written after `point`."""
    newer = [f"data/{s // SEGMENTS_PER_DIR}/{s}" for s in segments if s > point]
    return newer + [name for name in index_files if int(name.split(".")[1]) > point]


# Runs as the repo user: `python3 -c LOCKED_RUN REPO WAIT COMMAND...` holds borg's exclusive lock
# on REPO (waiting up to WAIT seconds for a live borg, as `--lock-wait` does) while COMMAND runs.
LOCKED_RUN = """\
import os, subprocess, sys
from borg.locking import Lock, LockError
repo, wait, command = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
try:
    lock = Lock(os.path.join(repo, "lock"), exclusive=True, timeout=wait).acquire()
except LockError as error:
    print(f"rollback: borg's lock on {repo} was not acquired within {wait:g} s ({type(error).__name__}: "
          f"a live borg is using the repo): nothing was moved", file=sys.stderr)
    sys.exit(75)
try:
    sys.exit(subprocess.call(command))
finally:
    lock.release()
"""


def _move_script(moves: list[str]) -> str:
    """sh -c script, $1 = repo, $2 = quarantine, $3 = move | back. `move` moves each file into the
    quarantine (never over a file) and, when one fails, puts back what it moved; `back` puts back
    every quarantined file whose place is free."""
    files = sh_join(moves)
    return (
        'set -u; R=$1; Q=$2\n'
        f'back() {{ _r=0; for f in {files}; do b=${{f##*/}}; '
        'if [ -e "$Q/$b" ] && [ ! -e "$R/$f" ]; then mv -- "$Q/$b" "$R/$f" || _r=1; fi; done; return $_r; }\n'
        'if [ "$3" = back ]; then back; exit $?; fi\n'
        f'for f in {files}; do b=${{f##*/}}; '
        f'{{ [ ! -e "$Q/$b" ] && mv -- "$R/$f" "$Q/$b"; }} || {{ back; exit {MOVE_FAILED}; }}; done\n'
    )


def rollback_script(path: str, user: str, quarantine: str, moves: list[str], lock_wait: int) -> str:
    """One script, run as root on the repo server: quarantine made (fresh), the files moved under
    borg's lock as `user`, `borg check --repository-only`, and the files put back when it fails."""
    q = sh_join
    locked = (f'locked() {{ runuser -u {q([user])} -- $_py -c {q([LOCKED_RUN])} {q([path, str(int(lock_wait))])} '
              f'sh -c {q([_move_script(moves)])} sh {q([path, quarantine])} "$1"; }}')
    return "\n".join([
        "set -u",
        f"install -d -m 0700 -o {q([user])} {q([quarantine.rsplit('/', 1)[0]])} || exit 1",
        f"mkdir -m 0700 {q([quarantine])} || {{ echo 'rollback: the quarantine directory exists: nothing was moved' >&2; exit 1; }}",
        f"chown {q([user])} {q([quarantine])} || exit 1",
        "_py=",  # borg's own interpreter (its shebang), else python3: the one that imports borg.locking
        f"for _c in \"$(sed -n '1s/^#! *//p' \"$(command -v borg)\")\" python3; do "
        "[ -n \"$_c\" ] && $_c -c 'import borg.locking' 2>/dev/null && { _py=$_c; break; }; done",
        f"[ -n \"$_py\" ] || {{ echo \"rollback: no Python here imports borg's lock (borg.locking): nothing was moved\" >&2; "
        f"rmdir {q([quarantine])}; exit 1; }}",
        locked,
        "locked move; _rc=$?",
        f"if [ $_rc -eq {LOCK_FAILED} ]; then rmdir {q([quarantine])}; exit 1; fi",
        f"if [ $_rc -eq {MOVE_FAILED} ]; then echo 'rollback: a move failed; what was moved is back in place: "
        f"nothing changed' >&2; rmdir {q([quarantine])} 2>/dev/null; exit 1; fi",
        f"if [ $_rc -ne 0 ]; then echo \"rollback: the move under borg's lock ended with status $_rc\" >&2; fi",
        f"if [ $_rc -eq 0 ] && runuser -u {q([user])} -- borg check --repository-only --lock-wait {int(lock_wait)} "
        f"{q([path])}; then echo {q([f'rollback: {len(moves)} file(s) moved to {quarantine}; borg check --repository-only passed'])}; exit 0; fi",
        f"[ $_rc -ne 0 ] || echo {q([f'rollback: borg check --repository-only failed after the move: putting the {len(moves)} moved file(s) back'])} >&2",
        f"if locked back; then echo 'rollback: every moved file is back in place; the repo is as it was before the rollback' >&2; "
        f"rmdir {q([quarantine])}; exit 1; fi",
        f"echo {q([f'rollback: not every moved file could be put back: what is left is in {quarantine}'])} >&2; exit 1",
    ])


def quarantine_dir(path: str, point: int, now: datetime) -> str:
    """`<repo>.rolled-back/<transaction>-<UTC time>`: a fresh directory per rollback, so that a later
    rollback to the same transaction never moves a file over one kept by an earlier one."""
    return f"{path}.rolled-back/{point}-{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"

