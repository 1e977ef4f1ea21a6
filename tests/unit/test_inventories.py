"""The inventories shipped in inventory/ load with pyinfra and validate against the schema."""

from pathlib import Path

import pytest
from pyinfra.api import State
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory as cli_make_inventory

from facts.borg import fleet_servers, host_plan
from pyinfra_backup.validate import host_key_checking_problem, inventory_errors

ROOT = Path(__file__).resolve().parents[2]


def make_inventory(path, cwd):
    with ctx_state.use(State()):  # pyinfra's CLI loads inventory files within a state
        return cli_make_inventory(path, cwd=cwd)


@pytest.mark.parametrize("name", ["local.py", "example.py"])
def test_shipped_inventory_is_valid(name):
    inventory = make_inventory(str(ROOT / "inventory" / name), cwd=str(ROOT))
    assert inventory_errors(inventory) == []
    assert [host_key_checking_problem(host.name, host.data.dict()) for host in inventory] == [None] * len(inventory)


def test_example_fleet_enrolls_every_nixos_host_on_the_repo_server():
    inventory = make_inventory(str(ROOT / "inventory" / "example.py"), cwd=str(ROOT))
    assert list(fleet_servers(inventory)) == ["backup-server"]
    for name in ("desktop", "laptop", "homeserver"):
        [planned] = host_plan(inventory.get_host(name), inventory)
        assert planned.server.name == "backup-server" and planned.location.url == "borg@backup-server.lan:."
        assert planned.job.compression == "auto,lzma" and dict(planned.job.keep) == {"daily": 7, "weekly": 4, "monthly": 6}
