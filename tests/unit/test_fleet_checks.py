"""pyinfra_backup/fleet_checks.py: what tests/infra decides (host selection, SSH data, check age)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pyinfra_backup.fleet_checks import check_overdue, select_hosts, ssh_connection

NAMES = ["web-1", "web-2", "db-1", "backup"]
GROUPS = {"clients": ["web-1", "web-2", "db-1"], "servers": ["backup"]}


def test_limit_takes_names_groups_and_globs_in_inventory_order():
    assert select_hosts(NAMES, GROUPS, []) == NAMES
    assert select_hosts(NAMES, GROUPS, ["servers", "db-1"]) == ["db-1", "backup"]
    assert select_hosts(NAMES, GROUPS, ["web-*,backup"]) == ["web-1", "web-2", "backup"]
    with pytest.raises(ValueError, match="--limit web-9: no host or group"):
        select_hosts(NAMES, GROUPS, ["web-1", "web-9"])


def test_ssh_connection_uses_pyinfra_data_and_defaults(monkeypatch):
    monkeypatch.setenv("HOME", "/home/op")
    full = ssh_connection("web-1", {
        "ssh_hostname": "10.0.0.5", "ssh_port": 2222, "ssh_user": "root", "ssh_key": "~/.ssh/fleet",
        "ssh_known_hosts_file": "/etc/fleet/known_hosts", "ssh_strict_host_key_checking": "yes",
        "ssh_allow_agent": False, "ssh_look_for_keys": False,
    })
    assert (full.hostspec, full.key, full.known_hosts, full.strict) == (
        "root@10.0.0.5:2222", "/home/op/.ssh/fleet", "/etc/fleet/known_hosts", "yes")
    assert (full.allow_agent, full.look_for_keys) == (False, False)
    bare = ssh_connection("web-2.example.org", {})
    assert (bare.hostspec, bare.known_hosts, bare.strict, bare.allow_agent) == (
        "web-2.example.org:22", "/home/op/.ssh/known_hosts", "accept-new", True)
    assert ssh_connection("v6", {"ssh_hostname": "fd00::5"}).hostspec == "[fd00::5]:22"
    with pytest.raises(ValueError, match="web-1: ssh_strict_host_key_checking: expected one of"):
        ssh_connection("web-1", {"ssh_strict_host_key_checking": "maybe"})


NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_a_check_is_overdue_once_the_run_after_the_one_that_should_have_checked_has_passed():
    assert check_overdue(at("2026-02-09T00:30"), "30d", ["daily"], NOW) is None  # not due before Mar 11
    # due Mar 10 00:30: the run at Mar 11 00:00 checks; tolerated until Mar 12 00:00
    assert check_overdue(at("2026-02-08T00:30"), "30d", ["daily"], NOW) is None
    # due Mar 8 00:30: the Mar 9 run should have checked, the Mar 10 run missed it too
    problem = check_overdue(at("2026-02-06T00:30"), "30d", ["daily"], NOW)
    assert problem == ("last successful borg check 32d11h ago (at 2026-02-06T00:30:00Z), checks.frequency 30d: "
                       "overdue since 2026-03-10T00:00:00Z")


def test_without_a_schedule_the_frequency_alone_counts_and_never_checked_is_overdue():
    assert check_overdue(at("2026-02-08T13:00"), "30d", [], NOW) is None
    assert "overdue since 2026-03-10T11:00:00Z" in check_overdue(at("2026-02-08T11:00"), "30d", [], NOW)
    assert check_overdue(None, "30d", ["daily"], NOW) == "no successful borg check recorded on the host"
