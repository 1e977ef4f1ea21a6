"""Each host's identity files, which a recovery must bring back as they were: present, private keys private."""

from __future__ import annotations

import re

import pytest


def test_machine_id_is_present(fleet, infra_host):
    machine_id = fleet.testinfra_host(infra_host).file("/etc/machine-id")
    assert machine_id.exists, f"{infra_host}: /etc/machine-id is missing"
    assert re.fullmatch(r"[0-9a-f]{32}\n?", machine_id.content_string), (
        f"{infra_host}: /etc/machine-id is not 32 hex digits: {machine_id.content_string[:40]!r}")


def test_ssh_host_keys_are_present_and_private(fleet, infra_host):
    host = fleet.testinfra_host(infra_host)
    keys = host.run("for k in /etc/ssh/ssh_host_*_key; do [ -e \"$k\" ] && echo \"$k\"; done; true").stdout.split()
    assert keys, f"{infra_host}: no SSH host key in /etc/ssh"
    problems = []
    for path in keys:
        key = host.file(path)
        if key.mode != 0o600 or key.user != "root":
            problems.append(f"{path} is {key.user} {key.mode:04o} (expected root 0600)")
        if not host.file(path + ".pub").exists:
            problems.append(f"{path}.pub is missing")
    assert not problems, f"{infra_host}: " + "; ".join(problems)


def test_nixos_uid_map_is_present(fleet, infra_host):
    host = fleet.testinfra_host(infra_host)
    if not host.file("/etc/NIXOS").exists:
        pytest.skip(f"{infra_host} is not NixOS (no /etc/NIXOS)")
    assert host.file("/var/lib/nixos").is_directory, f"{infra_host}: NixOS without /var/lib/nixos (uid/gid maps)"
