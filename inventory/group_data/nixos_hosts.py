"""Every NixOS host of inventory/example.py: their `services.borgbackup.jobs.system`.

The same attrset a NixOS configuration would hold, as JSON (`nix eval --json
.#nixosConfigurations.desktop.config.services.borgbackup.jobs` gives it), except the
repo: `borg@backup-server:.` enrolls the host on the fleet's repo server.
"""

borgbackup = {
    "jobs": {
        "system": {
            "paths": ["/home", "/var/lib", "/etc/nixos"],
            "exclude": ["/home/*/.cache", "/var/lib/docker"],
            "repo": "borg@backup-server:.",
            "encryption": {"mode": "repokey-blake2", "passCommand": "cat /run/agenix/borg-passphrase"},
            "compression": "auto,lzma",
            "startAt": "daily",
            "prune": {"keep": {"daily": 7, "weekly": 4, "monthly": 6}},
            "checks": {"frequency": "30d"},
        },
    },
    # The operator's private key on the machine running pyinfra: prune and compact use it.
    "operatorIdentity": "~/.ssh/id_ed25519",
}

# Host identity (machine-id, SSH host keys, /var/lib/nixos, ...) as state archives in the system job's repo,
# a new one only when those files change; default paths (schema.json). With "ageRecipients": [admin keys]
# the backup run also writes an age-encrypted copy to recovery/<host>/ on the operator's machine.
system_state = {"job": "system"}
