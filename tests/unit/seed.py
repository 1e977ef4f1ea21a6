"""The seed guide's own job (`services.borgbackup.jobs.system`), shared by the unit tests."""

SEED_JOB = {
    "paths": ["/home", "/var/lib", "/etc/nixos"],
    "repo": "borg@backup-server:/backups/hostname",
    "encryption": {"mode": "repokey-blake2", "passCommand": "cat /run/secrets/borg-passphrase"},
    "compression": "auto,lzma",
    "startAt": "daily",
    "prune": {"keep": {"daily": 7, "weekly": 4, "monthly": 6}},
}
