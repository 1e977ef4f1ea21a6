"""What an offsite copy needs to know of a repo server, in ONE remote command and without
contacting the remote: whether rclone is there, each repo's fingerprint, and the record of
its last verified copy (pyinfra_backup/offsite.py). Read by `tasks.offsite.copy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyinfra.api import FactBase

from pyinfra_backup.jsonable import JsonFact
from pyinfra_backup.offsite import NOT_A_REPO, Fingerprint, Record, fingerprint_command, record_path
from pyinfra_backup.shell import parse_sections, sectioned_script, sh_join


@dataclass(frozen=True)
class RepoState(JsonFact):
    """One repo: `fingerprint` None when there is no borg repo (yet); `error` when it could not be read."""

    fingerprint: Fingerprint | None
    record: Record | None
    error: str | None = None


@dataclass
class OffsiteState(JsonFact):
    rclone: bool
    repos: dict[str, RepoState] = field(default_factory=dict)


class OffsiteRepos(FactBase):
    """Example: `host.get_fact(OffsiteRepos, repos={"host01": "/var/lib/borgbackup/host01"})`
    -> OffsiteState(rclone=True, repos={"host01": RepoState(fingerprint=..., record=...)})."""

    def command(self, repos: dict[str, str]) -> str:
        self.names = sorted(repos)
        sections = {"rclone": "command -v rclone"}
        for name in self.names:
            sections[f"fp.{name}"] = fingerprint_command(repos[name])
            sections[f"rec.{name}"] = f"cat {sh_join([record_path(name)])}"
        return sectioned_script(sections)

    def process(self, output) -> OffsiteState:
        sections = parse_sections(output)
        state = OffsiteState(rclone=sections["rclone"].ok)
        for name in self.names:
            fp, rec = sections[f"fp.{name}"], sections[f"rec.{name}"]
            record = Record.parse(rec.text) if rec.ok else None
            fingerprint = Fingerprint.parse(fp.text) if fp.ok else None
            error = None
            if fp.rc != NOT_A_REPO and fingerprint is None:
                error = fp.error if not fp.ok else f"unexpected fingerprint {fp.text!r}"
            state.repos[name] = RepoState(fingerprint, record, error)
        return state
