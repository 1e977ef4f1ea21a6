"""The command line our own commands get on a host (tasks.common.login_command_line), from pyinfra's real
State, Inventory and Config: the run's `--sudo` (Config.SUDO) and a host's `_sudo` data wrap it as pyinfra wraps
an operation's commands; without either it is the plain command."""

from __future__ import annotations

import pytest
from pyinfra.api import Config, Inventory, State

from tasks.common import login_arguments, login_command_line

SCRIPT = "cat /root/borg-pass"


def _host(data: dict, **config):
    inventory = Inventory((["web01"], data))
    State(inventory, Config(**config))  # binds the host to the run's state and config
    return inventory.get_host("web01")


@pytest.mark.parametrize("data, config, expected", [
    ({}, {}, "sh -c 'cat /root/borg-pass'"),
    ({}, {"SUDO": True}, "sudo -H -n sh -c 'cat /root/borg-pass'"),
    ({"_sudo": True}, {}, "sudo -H -n sh -c 'cat /root/borg-pass'"),
    ({"_sudo": True, "_sudo_user": "backup"}, {}, "sudo -H -n -u backup sh -c 'cat /root/borg-pass'"),
    ({"_su_user": "root"}, {}, "su root -c 'sh -c '\"'\"'cat /root/borg-pass'\"'\"''"),
])
def test_the_runs_sudo_settings_wrap_our_own_commands(data, config, expected):
    host = _host({"ssh_user": "ops", **data}, **config)
    assert login_command_line(host, SCRIPT) == expected


def test_an_executing_operations_own_arguments_win():
    host = _host({"_sudo": True})
    host.current_op_global_arguments = {"_sudo": False, "_env": {"LANG": "C"}}  # an operation called with _sudo=False
    assert login_arguments(host)["_sudo"] is False
    assert login_command_line(host, SCRIPT) == "sh -c 'export LANG=C && cat /root/borg-pass'"
