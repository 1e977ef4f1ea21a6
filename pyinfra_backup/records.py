"""What a host remembers of its jobs, in `/var/lib/pyinfra-backup/jobs/<job>/`.

    last-create.json   `borg create --json` of the last successful create
    last-attempt       `<unix time> <exit status>` of the last create (or job failure), then error lines
    last-check         `<unix time> <exit status>` of the last `borg check`
    last-check-ok      `<unix time>` of the last successful `borg check`
    last-drill         `<unix time> <0 passed | 1 mismatch | 2 error>` then a summary line, written by
                       the restore drill of deploys/verify.py (pyinfra_backup/drill.py);
    last-state-drill   the same for the drill of the job's state archives

Commands here write them atomically (`shell.atomic_record`: a unique temp file, fsync, rename;
from the host's own clock); `read_sections` and `parse_records` read them back inside the host's
one-round-trip fact. A record that cannot be parsed (a crash, a hand edit) is named in
`JobRecords.unreadable`: the job's state is then `unknown`, and it backs up again. These
records feed the run's outcome, the metrics textfile and the freshness report.

>>> parse_attempt("1764244800 2\\nthe repo is locked").error
'the repo is locked'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from pyinfra_backup.borg import MISSING_REPO, STATE_DIR
from pyinfra_backup.shell import ReadFile, atomic_record, publish, sh_join

JOBS_DIR = f"{STATE_DIR}/jobs"
FILES = {"create": "last-create.json", "attempt": "last-attempt", "check": "last-check", "checkok": "last-check-ok"}


def job_dir(job: str) -> str:
    return f"{JOBS_DIR}/{job}"


@dataclass(frozen=True)
class Attempt:
    time: datetime
    rc: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0


@dataclass(frozen=True)
class JobRecords:
    create: dict | None = None
    attempt: Attempt | None = None
    check: Attempt | None = None
    check_ok: datetime | None = None
    unreadable: tuple[str, ...] = ()  # record files present but not parseable (FILES' names)

    @property
    def last_archive(self) -> tuple[str, datetime] | None:
        """Name and start time (UTC: borg runs with TZ=UTC) of the last archive this host made."""
        return _last_archive(self.create)


def _last_archive(create: dict | None) -> tuple[str, datetime] | None:
    archive = (create or {}).get("archive") or {}
    if not archive.get("name") or not archive.get("start"):
        return None
    return archive["name"], datetime.fromisoformat(archive["start"]).replace(tzinfo=timezone.utc)


def _time(text: str) -> datetime:
    return datetime.fromtimestamp(int(text), timezone.utc)


def parse_attempt(text: str) -> Attempt | None:
    lines = text.strip().splitlines()
    words = lines[0].split() if lines else []
    if len(words) != 2 or not all(w.lstrip("-").isdigit() for w in words):
        return None
    return Attempt(_time(words[0]), int(words[1]), "\n".join(lines[1:]).strip())


def read_sections(job: str) -> dict[str, ReadFile]:
    """Section name suffix -> file read, for `sectioned_script` (absent files: a failed section)."""
    return {key: ReadFile(f"{job_dir(job)}/{name}") for key, name in FILES.items()}


def _create_record(text: str) -> dict:
    create = json.loads(text)
    if not isinstance(create, dict) or not isinstance(create.get("archive", {}), dict):
        raise ValueError("not a borg create --json document")
    _last_archive(create)  # its archive's start time must parse too
    return create


def parse_records(texts: dict[str, str | None]) -> JobRecords:
    """`texts` maps the keys of `read_sections` to a file's content, None when absent. Never raises:
    a file that is present but cannot be parsed is left out and named in `unreadable`.

    >>> parse_records({"create": '{"archive": {}}{"arch', "attempt": "1764244800 0"}).unreadable
    ('last-create.json',)
    """
    unreadable = []
    create = texts.get("create")
    try:
        create = _create_record(create) if create and create.strip() else None
    except (ValueError, TypeError, AttributeError):
        create = None
        unreadable.append(FILES["create"])
    attempt, check = parse_attempt(texts.get("attempt") or ""), parse_attempt(texts.get("check") or "")
    for key, parsed in (("attempt", attempt), ("check", check)):
        if parsed is None and (texts.get(key) or "").strip():
            unreadable.append(FILES[key])
    check_ok = (texts.get("checkok") or "").strip()
    if check_ok and not check_ok.isdigit():
        unreadable.append(FILES["checkok"])
    return JobRecords(create=create, attempt=attempt, check=check,
                      check_ok=_time(check_ok) if check_ok.isdigit() else None, unreadable=tuple(unreadable))


def record_attempt(job: str, rc: int, message: str) -> str:
    """A command recording a failed (or successful) attempt of the job, with its reason."""
    return atomic_record(f"{job_dir(job)}/{FILES['attempt']}",
                         f"printf '%s %s\\n%s\\n' \"$(date +%s)\" {int(rc)} {sh_join([message])}")


# What borg prints after an unexpected error, besides the error itself: its platform, versions, argv and the
# traceback (also the server's, prefixed "Borg server: "). The last lines of a log are these, not the reason.
BORG_NOISE = (r"^(Borg server: )?((Platform|Linux|Borg|PID|sys\.argv|SSH_ORIGINAL_COMMAND): "
              r"|Traceback |During handling |Local Exception|[[:space:]]|$)")


def error_lines(log: str, count: int = 3) -> str:
    """A command printing the last `count` lines of a borg log that say what went wrong."""
    return f"grep -v -E {sh_join([BORG_NOISE])} {log} | tail -n {count}"


TEMP = '"$_pbk_c"'  # create_command's own temp file for borg's JSON


def create_command(job: str, borg_create: str, accept_warnings: bool, init_if_missing: str | None = None) -> str:
    """Run `borg create --json` and record its outcome either way; exits with borg's status
    (a warning, rc 1, counts as success when `accept_warnings`). With `init_if_missing` (a
    `borg init` command line), a repo that borg reports missing is initialised, then created into.
    borg's JSON goes to a temp file of this run's own, published only when borg succeeded."""
    directory = job_dir(job)
    d, record = sh_join([directory]), f"{directory}/{FILES['create']}"
    limit = 1 if accept_warnings else 0
    create = f"{borg_create} > {TEMP}"
    retry = ""
    if init_if_missing:
        retry = (f"if [ $_rc -eq 2 ] && grep -Eqi {sh_join([MISSING_REPO.pattern])} {d}/create.log; then "
                 f"{{ {init_if_missing} && {create}; }} 2> {d}/create.log; _rc=$?; fi; ")
    attempt, log = f"{directory}/{FILES['attempt']}", f"{d}/create.log"
    succeeded = atomic_record(attempt, 'echo "$(date +%s) 0"')
    failed = atomic_record(attempt, 'echo "$(date +%s) $_rc"; ' + error_lines(log))
    return (
        f"mkdir -p {d} && cd / && _pbk_c=$(mktemp {sh_join([record])}.XXXXXX) || exit 2; "
        f"{{ {create} 2> {log}; _rc=$?; }}; {retry}"
        f"if [ $_rc -le {limit} ]; then {publish(TEMP, record)} && {succeeded}; "
        f"else {failed}; {error_lines(log)} >&2; rm -f {TEMP}; exit $_rc; fi"
    )


def check_command(job: str, borg_check: str) -> str:
    """Run `borg check` and record when it ran, with what result, and when it last passed."""
    directory = job_dir(job)
    ran = atomic_record(f"{directory}/{FILES['check']}", 'echo "$(date +%s) $_rc"')
    passed = atomic_record(f"{directory}/{FILES['checkok']}", "date +%s")
    return (f"mkdir -p {sh_join([directory])} && {{ {borg_check}; _rc=$?; }}; {ran}; "
            f"if [ $_rc -eq 0 ]; then {passed}; fi; exit $_rc")
