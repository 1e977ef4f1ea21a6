"""The archive ledger: every archive of a fleet repo the operator has seen (pure: no I/O).

A client's append-only key can delete archives from `borg list` (the data stays until a full-access
compact) and add archives of its own, named like the job's and stamped with any time (`--timestamp`).
Before the operator's full-access prune + compact, the operator's own listing of the repo is compared
with what the ledger recorded (`compare`):

- **vanished**: an archive recorded and neither pruned by our prune nor acknowledged lost is not in the
  repo any more (or another archive holds its name);
- **backdated**: an archive not seen before is stamped before the previous listing (or in the future):
  it was not there when we last looked, so it was made to look older (or newer) than it is, e.g. to
  steer prune's `keep` rules.

Either one stops maintenance of the repo (`mark_tampered`) until an operator acknowledges it
(`acknowledge`). Otherwise `observe` records what the listing holds, and the archives our prune is
about to delete as pruned (written before borg runs: a prune that dies half-way leaves no false alarm).

    ledger = observe(Ledger(), listing.archives, listing.repo_id, now)
    tampering = compare(ledger, later.archives, later.repo_id, later_now)   # None: nothing suspicious

Times are ISO 8601 UTC strings in the ledger (it is kept as JSON, `to_json` / `from_json`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from pyinfra_backup.borg import Archive

CLOCK_SKEW = timedelta(minutes=10)  # a client's clock may be this far off the operator's without alarm
FORMAT = 1


@dataclass(frozen=True)
class Entry:
    """One archive as the ledger knows it."""

    id: str
    time: str  # the archive's start (the client's clock), ISO UTC
    first_seen: str  # when an operator listing first showed it (the operator's clock)
    pruned: str | None = None  # when our own prune deleted it
    lost: str | None = None  # when an operator acknowledged it gone

    @property
    def expected(self) -> bool:
        """Whether the repo must still hold it."""
        return self.pruned is None and self.lost is None


@dataclass(frozen=True)
class Tampering:
    """What a comparison found: the archives that vanished and those that appeared backdated."""

    found: str  # when (ISO UTC)
    vanished: tuple[str, ...] = ()
    backdated: tuple[str, ...] = ()

    def message(self) -> str:
        parts = []
        if self.vanished:
            parts.append(f"{len(self.vanished)} archive(s) vanished that no operator prune removed: "
                         + ", ".join(self.vanished))
        if self.backdated:
            parts.append(f"{len(self.backdated)} archive(s) appeared stamped before the previous listing "
                         "(or in the future): " + ", ".join(self.backdated))
        return "; ".join(parts)


@dataclass(frozen=True)
class Ledger:
    """A repo's ledger: its id, when it was last listed, every archive seen, and whether it is tampered."""

    repo_id: str | None = None
    listed_at: str | None = None
    archives: dict[str, Entry] = field(default_factory=dict)
    tampered: Tampering | None = None
    acknowledged: tuple[dict, ...] = ()  # [{"time", "found", "vanished", "backdated", "lost"}], oldest first


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="seconds")


def _when(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _real(archives: Iterable[Archive]) -> dict[str, Archive]:
    """The archives that count: checkpoints are borg's own leftovers, replaced by the archive that follows."""
    return {a.name: a for a in archives if not a.is_checkpoint}


def _same_repo(ledger: Ledger, repo_id: str | None) -> bool:
    return ledger.repo_id is None or repo_id is None or ledger.repo_id == repo_id


def compare(ledger: Ledger, archives: Iterable[Archive], repo_id: str | None, now: datetime) -> Tampering | None:
    """What the listing (`archives` of repo `repo_id`, read at `now`) shows against the ledger, or None
    when nothing is suspicious. A repo never listed, or with another id (made anew), is a first look."""
    if ledger.listed_at is None or not _same_repo(ledger, repo_id):
        return None
    current = _real(archives)
    vanished = sorted(name for name, entry in ledger.archives.items()
                      if entry.expected and (name not in current or (entry.id and current[name].id != entry.id)))
    earliest, latest = _when(ledger.listed_at) - CLOCK_SKEW, now + CLOCK_SKEW
    backdated = sorted(name for name, archive in current.items()
                       if name not in ledger.archives and not earliest <= archive.time <= latest)
    if not vanished and not backdated:
        return None
    return Tampering(_iso(now), tuple(vanished), tuple(backdated))


def observe(ledger: Ledger, archives: Iterable[Archive], repo_id: str | None, now: datetime,
            pruned: Iterable[str] = ()) -> Ledger:
    """The ledger after a listing at `now` that `compare` found clean: new archives recorded, and
    `pruned` (what our prune is about to delete) marked so. A repo with another id starts a new ledger."""
    base = ledger if _same_repo(ledger, repo_id) else Ledger(acknowledged=ledger.acknowledged)
    stamp, doomed = _iso(now), set(pruned)
    entries = dict(base.archives)
    for name, archive in _real(archives).items():
        known = entries.get(name)
        if known is None or (archive.id and known.id != archive.id):
            known = Entry(archive.id, _iso(archive.time), stamp)
        entries[name] = replace(known, pruned=stamp) if name in doomed and known.pruned is None else known
    return replace(base, repo_id=repo_id or base.repo_id, listed_at=stamp, archives=entries)


def mark_tampered(ledger: Ledger, tampering: Tampering) -> Ledger:
    """The ledger of a repo found tampered: maintenance stops until `acknowledge`. A repo already
    tampered keeps its first finding."""
    return ledger if ledger.tampered else replace(ledger, tampered=tampering)


def acknowledge(ledger: Ledger, archives: Iterable[Archive], repo_id: str | None, now: datetime) -> Ledger:
    """An operator's acknowledgement of the tampering, with the repo's listing at `now` (after a
    rollback, or accepting the loss): archives recorded but not in it are marked lost, the listing
    becomes the new reference, and the finding moves to the `acknowledged` history."""
    current, stamp = _real(archives), _iso(now)
    lost = sorted(name for name, entry in ledger.archives.items() if entry.expected and name not in current)
    entries = {name: replace(entry, lost=stamp) if name in lost else entry for name, entry in ledger.archives.items()}
    finding = ledger.tampered or Tampering(stamp)
    history = {"time": stamp, "found": finding.found, "vanished": list(finding.vanished),
               "backdated": list(finding.backdated), "lost": lost}
    cleared = replace(ledger, archives=entries, tampered=None, acknowledged=(*ledger.acknowledged, history))
    return observe(cleared, archives, repo_id, now)


def to_json(ledger: Ledger) -> str:
    data = {
        "format": FORMAT, "repo_id": ledger.repo_id, "listed_at": ledger.listed_at,
        "tampered": None if ledger.tampered is None else {
            "found": ledger.tampered.found, "vanished": list(ledger.tampered.vanished),
            "backdated": list(ledger.tampered.backdated)},
        "acknowledged": list(ledger.acknowledged),
        "archives": {name: {key: value for key, value in vars(entry).items() if value is not None}
                     for name, entry in sorted(ledger.archives.items())},
    }
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def from_json(text: str) -> Ledger:
    """A ledger from `to_json`'s text; ValueError when it is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a ledger of format {FORMAT}")
    tampered = data.get("tampered")
    return Ledger(
        repo_id=data.get("repo_id"),
        listed_at=data.get("listed_at"),
        archives={name: Entry(**entry) for name, entry in (data.get("archives") or {}).items()},
        tampered=None if tampered is None else Tampering(
            tampered["found"], tuple(tampered.get("vanished", ())), tuple(tampered.get("backdated", ()))),
        acknowledged=tuple(data.get("acknowledged") or ()),
    )
