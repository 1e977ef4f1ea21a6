"""Facts about a host's identity files ("system state"), each read in ONE remote command.

    pyinfra INVENTORY fact facts.state.StateDigest 'paths=["/etc/machine-id","/etc/ssh/ssh_host_*"]' job=system

`StateDigest`: the live files (globs expanded, digest of content, type, owner and mode) and the
digest of the last state archive. `StateArchive`: a state archive's items, read from the repo.
"""

from __future__ import annotations

from pyinfra.api import FactBase

from pyinfra_backup.borg import explain_error
from pyinfra_backup.shell import parse_sections, sectioned_script, sh_join
from pyinfra_backup.state import (
    LiveState, archive_script, digest_script, parse_archive_output, parse_digest_output, parse_record,
    record_path,
)


class StateDigest(FactBase):
    """The host's hostname, the files `paths` name (glob patterns; `literal=True`: plain paths),
    the patterns that name nothing, the files that cannot be read, and the record of the job's
    last state archive. Example: `host.get_fact(StateDigest, paths=["/etc/machine-id"], job="system")`
    -> LiveState(hostname="host01", entries={"etc/machine-id": Entry(...)}, ...)."""

    def command(self, paths: list[str], job: str, literal: bool = False) -> str:
        return sectioned_script({
            "hostname": "uname -n",
            "files": digest_script(paths, literal=literal),
            "record": f"cat {sh_join([record_path(job)])}",
        })

    def process(self, output) -> LiveState:
        sections = parse_sections(output)
        files, record = sections["files"], sections["record"]
        entries, roots, skipped, unreadable = parse_digest_output(files.stdout, files.stderr)
        return LiveState(
            hostname=sections["hostname"].text.strip(),
            entries=entries, roots=roots, skipped=skipped, unreadable=unreadable,
            recorded=parse_record(record.text) if record.ok else None,
        )


class StateArchive(FactBase):
    """The job's state archives (oldest first) and the items of one of them (`latest` by default),
    read with the job's borg on the host. `borg` is the job's `borg` with its environment
    (`with_env(borg_env(...), ["borg"])`). Example: `host.get_fact(StateArchive, borg=..., url="borg@backup:.",
    base_name="host01-system")` -> {"names": [...], "name": "host01-system-state-...", "items": {path: Entry},
    "error": None}."""

    def command(self, borg: str, url: str, base_name: str, archive: str = "latest") -> str:
        self.archive = archive
        return sectioned_script({"archive": archive_script(borg, url, base_name, archive)})

    def process(self, output) -> dict:
        section = parse_sections(output)["archive"]
        if not section.ok:
            return {"names": [], "name": None, "items": {}, "error": explain_error(section.error)}
        names, items = parse_archive_output(section.stdout)
        name = (names[-1] if names else None) if self.archive == "latest" else self.archive
        return {"names": names, "name": name if name in names else None, "items": items, "error": None}
