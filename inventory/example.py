"""An example fleet: three NixOS hosts backing up to one repo server.

    pyinfra -y inventory/example.py deploys/backup_server.py
    pyinfra -y inventory/example.py deploys/backup.py
    pyinfra inventory/example.py fact facts.borg.BackupFreshness

Job and server settings live in group_data/ (nixos_hosts.py, backup_servers.py);
a host's own data overrides its groups' (pyinfra merges top-level keys).

The operator reaches every host with its pinned host key only: pyinfra's default
(`accept-new`) trusts whichever key answers first, and the clients pin the repo server's
keys as read over that connection (a repo server reached without strict checking is
refused). Pin each host once, after comparing its fingerprint out of band:

    ssh-keyscan backup-server.lan | ssh-keygen -lf -         # here
    ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub          # on the host's console: the same?
    ssh-keyscan backup-server.lan >> ~/.ssh/fleet_known_hosts

Each job's passphrase comes from its passCommand on the host: here an agenix secret
(group_data/nixos_hosts.py). A host without agenix can have one made on it, once:

    pyinfra -y inventory/example.py tasks.passphrase.generate --limit HOST
    # and passCommand = "cat /var/lib/pyinfra-backup/passphrase" in its job

docs/first-fleet.md walks through a whole first fleet.
"""

# How pyinfra logs in: as root, with the operator's key, trusting only the pinned host keys.
# (Or as a user with passwordless sudo: "ssh_user": "ops", "_sudo": True.)
_PINNED = {
    "ssh_user": "root",
    "ssh_key": "~/.ssh/id_ed25519",
    "ssh_strict_host_key_checking": "yes",
    "ssh_known_hosts_file": "~/.ssh/fleet_known_hosts",
}

nixos_hosts = [
    ("desktop", {"ssh_hostname": "desktop.lan", **_PINNED}),
    ("laptop", {"ssh_hostname": "laptop.lan", **_PINNED}),
    ("homeserver", {"ssh_hostname": "homeserver.lan", **_PINNED}),
]

backup_servers = [
    ("backup-server", {"ssh_hostname": "backup-server.lan", **_PINNED}),
]
