"""The archive ledger against a repo's listing (pyinfra_backup/ledger.py), and its files."""

import os
from datetime import datetime, timedelta, timezone

import pytest

from pyinfra_backup import ledger_store
from pyinfra_backup.borg import Archive
from pyinfra_backup.ledger import Ledger, Tampering, acknowledge, compare, from_json, mark_tampered, observe, to_json

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def archive(day: int, suffix: str = "", id_: str | None = None) -> Archive:
    when = T0 + day * DAY
    return Archive(f"host01-system-{when:%Y-%m-%dT%H:%M:%S}{suffix}", when, id_ or f"id-{day}{suffix}")


REAL = [archive(0), archive(1)]
SEEN = observe(Ledger(), REAL, "repo", T0 + DAY + timedelta(minutes=1))


def test_a_first_listing_is_the_reference_nothing_is_suspicious():
    assert compare(Ledger(), REAL, "repo", T0) is None
    assert set(SEEN.archives) == {a.name for a in REAL}
    assert SEEN.archives[REAL[0].name].first_seen == "2026-11-28T02:01:00+00:00"


def test_a_new_archive_of_the_next_run_is_not_suspicious():
    later = T0 + 2 * DAY
    assert compare(SEEN, [*REAL, archive(2)], "repo", later) is None


def test_the_attack_deleted_archives_and_backdated_junk_are_named():
    junk = [Archive(f"host01-system-2020-01-01T00:00:0{i}", datetime(2020, 1, 1, 0, 0, i, tzinfo=timezone.utc), f"j{i}")
            for i in range(3)]
    found = compare(SEEN, [*junk, archive(2)], "repo", T0 + 2 * DAY)
    assert found.vanished == tuple(sorted(a.name for a in REAL))
    assert found.backdated == tuple(a.name for a in junk)
    assert REAL[0].name in found.message() and "host01-system-2020-01-01T00:00:02" in found.message()


def test_a_deletion_alone_and_a_backdated_archive_alone_are_each_tampering():
    assert compare(SEEN, REAL[1:], "repo", T0 + 2 * DAY).vanished == (REAL[0].name,)
    old = Archive("host01-system-2026-11-27T12:00:00", T0 + timedelta(hours=10), "x")
    assert compare(SEEN, [*REAL, old], "repo", T0 + 2 * DAY).backdated == (old.name,)


def test_an_archive_stamped_in_the_future_is_tampering_a_little_clock_skew_is_not():
    now = T0 + 2 * DAY
    future = Archive("host01-system-2027-01-01T00:00:00", datetime(2027, 1, 1, tzinfo=timezone.utc), "f")
    skewed = Archive("host01-system-skewed", T0 + DAY + timedelta(minutes=1) - timedelta(minutes=5), "s")
    assert compare(SEEN, [*REAL, future], "repo", now).backdated == (future.name,)
    assert compare(SEEN, [*REAL, skewed], "repo", now) is None


def test_an_archive_replaced_under_its_own_name_has_vanished():
    forged = Archive(REAL[0].name, REAL[0].time, "another-id")
    assert compare(SEEN, [forged, REAL[1]], "repo", T0 + 2 * DAY).vanished == (REAL[0].name,)


def test_what_our_prune_deletes_is_recorded_and_not_vanished():
    now = T0 + 2 * DAY
    pruned = observe(SEEN, [*REAL, archive(2)], "repo", now, pruned=[REAL[0].name])
    assert pruned.archives[REAL[0].name].pruned == "2026-11-29T02:00:00+00:00"
    assert compare(pruned, [REAL[1], archive(2)], "repo", now + DAY) is None


def test_checkpoints_come_and_go_unrecorded():
    checkpoint = archive(2, ".checkpoint")
    with_checkpoint = observe(SEEN, [*REAL, checkpoint], "repo", T0 + 2 * DAY)
    assert checkpoint.name not in with_checkpoint.archives
    assert compare(with_checkpoint, [*REAL, archive(2)], "repo", T0 + 2 * DAY) is None


def test_a_repo_made_anew_with_another_id_starts_a_new_ledger():
    assert compare(SEEN, [archive(5)], "new-repo", T0 + 5 * DAY) is None
    assert set(observe(SEEN, [archive(5)], "new-repo", T0 + 5 * DAY).archives) == {archive(5).name}


def test_acknowledging_after_a_rollback_accepts_the_repo_as_it_is_and_keeps_the_finding():
    found = compare(SEEN, [archive(2)], "repo", T0 + 2 * DAY)
    tampered = mark_tampered(SEEN, found)
    assert mark_tampered(tampered, Tampering("later", ("x",))).tampered == found  # the first finding stays
    rolled_back = REAL  # the rollback brought both back; the run's own archive(2) is gone with it
    acked = acknowledge(tampered, rolled_back, "repo", T0 + 3 * DAY)
    assert acked.tampered is None and acked.acknowledged[-1]["vanished"] == list(found.vanished)
    assert acked.acknowledged[-1]["lost"] == []
    assert compare(acked, [*REAL, archive(3)], "repo", T0 + 3 * DAY + timedelta(minutes=5)) is None


def test_acknowledging_a_loss_marks_the_missing_archives_lost():
    acked = acknowledge(mark_tampered(SEEN, compare(SEEN, REAL[1:], "repo", T0 + 2 * DAY)), REAL[1:], "repo", T0 + 2 * DAY)
    assert acked.archives[REAL[0].name].lost and acked.acknowledged[-1]["lost"] == [REAL[0].name]
    assert compare(acked, REAL[1:], "repo", T0 + 3 * DAY) is None


def test_json_round_trip_and_a_foreign_file_is_refused():
    tampered = mark_tampered(SEEN, compare(SEEN, [archive(2)], "repo", T0 + 2 * DAY))
    assert from_json(to_json(tampered)) == tampered
    with pytest.raises(ValueError):
        from_json('{"archives": {}}')


def test_the_store_writes_atomically_private_and_refuses_a_broken_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PYINFRA_BACKUP_STATE", str(tmp_path))
    assert ledger_store.load("backup", "host01") == Ledger()
    path = ledger_store.save("backup", "host01", SEEN)
    assert path == tmp_path / "ledger/backup/host01.json"
    assert ledger_store.load("backup", "host01") == SEEN
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert os.listdir(path.parent) == ["host01.json"]  # no temp file left
    path.write_text("{not json")
    with pytest.raises(ledger_store.LedgerError, match="cannot be read"):
        ledger_store.load("backup", "host01")
    with pytest.raises(ledger_store.LedgerError):
        ledger_store.ledger_path("backup", "../etc")
