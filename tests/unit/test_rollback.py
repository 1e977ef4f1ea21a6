"""The rollback's pure parts: the point in the transaction log, the files after it, the quarantine."""

from datetime import datetime, timezone

import pytest

from pyinfra_backup.rollback import RollbackError, files_after, parse_utc, quarantine_dir, rollback_point

LOG = [(1, "2026-11-27T11:00:00.100000"), (5, "2026-11-27T11:59:59.900000"), (9, "2026-11-27T12:00:00.500000")]


@pytest.mark.parametrize("text", ["2026-11-27T12:00:00", "2026-11-27T12:00:00Z", "2026-11-27T12:00:00+00:00",
                                  "2026-11-27 12:00:00", "2026-11-27T12:00:00.000000"])
def test_before_is_an_iso_time_in_utc(text):
    assert parse_utc(text) == datetime(2026, 11, 27, 12, tzinfo=timezone.utc)


@pytest.mark.parametrize("text", ["yesterday", "27/11/2026 12:00", "2026-11-27T25:00:00", "", "1764244800"])
def test_anything_else_is_refused_saying_what_is_expected(text):
    with pytest.raises(RollbackError, match="not an ISO-8601 time .*UTC"):
        rollback_point(LOG, None, text)


def test_a_time_in_another_zone_is_refused():
    with pytest.raises(RollbackError, match="in UTC"):
        rollback_point(LOG, None, "2026-11-27T13:00:00+01:00")


def test_before_is_compared_as_a_time_not_as_text():
    # As text, "2026-11-27T12:00:00.500000" < "2026-11-27T12:00:00Z" ('.' < 'Z'): transaction 9 would count as
    # earlier although it was committed half a second after the time given.
    assert rollback_point(LOG, None, "2026-11-27T12:00:00Z") == 5
    assert rollback_point(LOG, None, "2026-11-27T12:00:00") == 5
    assert rollback_point(LOG, None, "2026-11-27T12:00:01") == 9
    # As text "2026-11-27 11:59:59.95" sorts before every 'T' entry: as a time it is after transaction 5.
    assert rollback_point(LOG, None, "2026-11-27 11:59:59.95") == 5


def test_the_point_must_exist_and_exactly_one_way_is_given():
    assert rollback_point(LOG, 5, None) == 5
    with pytest.raises(RollbackError, match="no transaction 4"):
        rollback_point(LOG, 4, None)
    with pytest.raises(RollbackError, match="no transaction committed before"):
        rollback_point(LOG, None, "2026-11-27T11:00:00")
    with pytest.raises(RollbackError, match="exactly one"):
        rollback_point(LOG, 5, "2026-11-27T12:00:00")


def test_files_after_the_point_are_the_newer_segments_and_index_files():
    assert files_after(5, [0, 4, 5, 6, 1003], ["index.9", "hints.9", "integrity.9", "index.5"]) == [
        "data/0/6", "data/1/1003", "index.9", "hints.9", "integrity.9"]


def test_each_rollback_gets_a_fresh_quarantine():
    first = quarantine_dir("/r", 5, datetime(2026, 11, 27, 12, tzinfo=timezone.utc))
    assert first == "/r.rolled-back/5-20261127T120000Z"
    assert quarantine_dir("/r", 5, datetime(2026, 11, 28, 12, tzinfo=timezone.utc)) != first
