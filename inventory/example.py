"""The seed guide's fleet: three NixOS hosts backing up to one repo server.

    pyinfra -y inventory/example.py deploys/backup_server.py
    pyinfra -y inventory/example.py deploys/backup.py
    pyinfra inventory/example.py fact facts.borg.BackupFreshness

Job and server settings live in group_data/ (nixos_hosts.py, backup_servers.py);
a host's own data overrides its groups' (pyinfra merges top-level keys).
"""

nixos_hosts = [
    ("desktop", {"ssh_hostname": "desktop.lan"}),
    ("laptop", {"ssh_hostname": "laptop.lan"}),
    ("homeserver", {"ssh_hostname": "homeserver.lan"}),
]

backup_servers = [
    ("backup-server", {"ssh_hostname": "backup-server.lan"}),
]
