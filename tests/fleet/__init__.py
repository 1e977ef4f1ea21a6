"""SSH test fleet: network/mount/UTS namespace hosts over an overlay of /, each with its own sshd.

    from tests.fleet import Fleet
    with Fleet() as fleet:
        fleet.up(["host01", "host02"], group="clients")
        fleet.run("host01", "hostname")            # directly, via nsenter
        fleet.write_inventory("inventory.py")      # pyinfra, via ssh

CLI: ``python -m tests.fleet up 5 | down | status``. Fixtures: ``tests/conftest.py``.
"""

from .core import (
    BRIDGE,
    BRIDGE_ADDRESS,
    DEFAULT_STATE_ROOT,
    NET_PREFIX,
    PREFIX,
    PROJECT_ROOT,
    Fleet,
    FleetError,
    Host,
    RunError,
    check_prerequisites,
    cleanup_leftovers,
    discover,
    install_teardown_handlers,
    teardown_all,
)

__all__ = [
    "BRIDGE",
    "BRIDGE_ADDRESS",
    "DEFAULT_STATE_ROOT",
    "NET_PREFIX",
    "PREFIX",
    "PROJECT_ROOT",
    "Fleet",
    "FleetError",
    "Host",
    "RunError",
    "check_prerequisites",
    "cleanup_leftovers",
    "discover",
    "install_teardown_handlers",
    "teardown_all",
]
