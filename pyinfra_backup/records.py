"""What a host remembers of its jobs, in `/var/lib/pyinfra-backup/jobs/<job>/`.

    last-create.json   `borg create --json` of the last successful create
    last-attempt       `<unix time> <exit status>` of the last create (or job failure), then error lines
    last-check         `<unix time> <exit status>` of the last `borg check`
    last-check-ok      `<unix time>` of the last successful `borg check`
    last-drill         `<unix time> <0 passed | 1 mismatch | 2 error>` then a summary line, written by
                       the restore drill of deploys/verify.py (pyinfra_backup/drill.py);
    last-state-drill   the same for the drill of the job's state archives

Commands here write them (atomically, from the host's own clock); `read_sections`
and `parse_records` read them back inside the host's one-round-trip fact. These
records feed the run's outcome, the metrics textfile and the freshness report.

>>> parse_attempt("1764244800 2\\nthe repo is locked").error
'the repo is locked'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from pyinfra_backup.borg import MISSING_REPO, STATE_DIR
from pyinfra_backup.shell import ReadFile, sh_join

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

    @property
    def last_archive(self) -> tuple[str, datetime] | None:
        """Name and start time (UTC: borg runs with TZ=UTC) of the last archive this host made."""
        archive = (self.create or {}).get("archive") or {}
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


def parse_records(texts: dict[str, str | None]) -> JobRecords:
    """`texts` maps the keys of `read_sections` to a file's content, None when absent."""
    create = texts.get("create")
    check_ok = (texts.get("checkok") or "").strip()
    return JobRecords(
        create=json.loads(create) if create and create.strip() else None,
        attempt=parse_attempt(texts.get("attempt") or ""),
        check=parse_attempt(texts.get("check") or ""),
        check_ok=_time(check_ok) if check_ok.isdigit() else None,
    )


def record_attempt(job: str, rc: int, message: str) -> str:
    """A command recording a failed (or successful) attempt of the job, with its reason."""
    path = f"{job_dir(job)}/{FILES['attempt']}"
    return (
        f"mkdir -p {sh_join([job_dir(job)])} && "
        f"printf '%s %s\\n%s\\n' \"$(date +%s)\" {rc} {sh_join([message])} > {sh_join([path + '.tmp'])} && "
        f"mv -f {sh_join([path + '.tmp', path])}"
    )


# What borg prints after an unexpected error, besides the error itself: its platform, versions, argv and the
# traceback (also the server's, prefixed "Borg server: "). The last lines of a log are these, not the reason.
BORG_NOISE = (r"^(Borg server: )?((Platform|Linux|Borg|PID|sys\.argv|SSH_ORIGINAL_COMMAND): "
              r"|Traceback |During handling |Local Exception|[[:space:]]|$)")


def error_lines(log: str, count: int = 3) -> str:
    """A command printing the last `count` lines of a borg log that say what went wrong."""
    return f"grep -v -E {sh_join([BORG_NOISE])} {log} | tail -n {count}"


def create_command(job: str, borg_create: str, accept_warnings: bool, init_if_missing: str | None = None) -> str:
    """Run `borg create --json` and record its outcome either way; exits with borg's status
    (a warning, rc 1, counts as success when `accept_warnings`). With `init_if_missing` (a
    `borg init` command line), a repo that borg reports missing is initialised, then created into."""
    d = sh_join([job_dir(job)])
    limit = 1 if accept_warnings else 0
    create = f"{borg_create} > {d}/last-create.json.tmp"
    retry = ""
    if init_if_missing:
        retry = (f"if [ $_rc -eq 2 ] && grep -Eqi {sh_join([MISSING_REPO.pattern])} {d}/create.log; then "
                 f"{{ {init_if_missing} && {create}; }} 2> {d}/create.log; _rc=$?; fi; ")
    return (
        f"mkdir -p {d} && cd / && {{ {create} 2> {d}/create.log; _rc=$?; }}; {retry}"
        f"if [ $_rc -le {limit} ]; then mv -f {d}/last-create.json.tmp {d}/last-create.json && "
        f"echo \"$(date +%s) 0\" > {d}/last-attempt; "
        f"else {{ echo \"$(date +%s) $_rc\"; {error_lines(f'{d}/create.log')}; }} > {d}/last-attempt; "
        f"{error_lines(f'{d}/create.log')} >&2; rm -f {d}/last-create.json.tmp; exit $_rc; fi"
    )


def check_command(job: str, borg_check: str) -> str:
    """Run `borg check` and record when it ran, with what result, and when it last passed."""
    d = sh_join([job_dir(job)])
    return (
        f"mkdir -p {d} && {{ {borg_check}; _rc=$?; }}; echo \"$(date +%s) $_rc\" > {d}/last-check; "
        f"if [ $_rc -eq 0 ]; then date +%s > {d}/last-check-ok; fi; exit $_rc"
    )
