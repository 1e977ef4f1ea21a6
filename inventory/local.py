"""The demo inventory: this machine (`@local`) backs up to a local borg repo.

    pyinfra -y inventory/local.py deploys/backup.py
    pyinfra inventory/local.py fact facts.borg.BackupFreshness

No server needed. The passphrase file is made once, mode 0600, by
scripts/backup-local.sh (the README's first command).
"""

PASSPHRASE_FILE = "/var/lib/pyinfra-backup/local-passphrase"

hosts = [
    (
        "@local",
        {
            "borgbackup": {
                "jobs": {
                    "local": {
                        "paths": ["/etc"],
                        "exclude": ["/etc/ssh/ssh_host_*_key"],
                        "repo": "/var/backups/pyinfra-backup/local",
                        "encryption": {"mode": "repokey-blake2", "passCommand": f"cat {PASSPHRASE_FILE}"},
                        "compression": "auto,zstd",
                        "startAt": "daily",
                        "prune": {"keep": {"daily": 7, "weekly": 4, "monthly": 6}},
                        "checks": {"frequency": "30d"},
                    },
                },
            },
        },
    ),
]
