"""Provision the fleet's borg repo servers (hosts with `borgbackup.repos`).

    pyinfra -y INVENTORY deploys/backup_server.py

Users, 0700 repo directories and authorized_keys exactly as NixOS'
`services.borgbackup.repos` writes them, plus the enrolled clients' append-only
keys and `borgbackup.operatorKeys`. A re-run changes nothing.
"""

from pyinfra import host, inventory

from facts.borg import fleet_servers
from pyinfra_backup.validate import require_valid_inventory
from tasks import borg

require_valid_inventory()

if host.name in fleet_servers(inventory):
    borg.repo_server(name="Repo server: users, repo directories, authorized_keys")
