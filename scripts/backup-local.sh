#!/usr/bin/env bash
# The main job on this machine: install, back up /etc to a local borg repo, print freshness.
# Idempotent: a second run installs nothing and reports "No changes" for every operation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

passphrase_file=$(.venv/bin/python -c 'import inventory.local as l; print(l.PASSPHRASE_FILE)')
if [ ! -s "$passphrase_file" ]; then
    install -d -m 0700 "$(dirname "$passphrase_file")"
    (umask 077 && head -c 32 /dev/urandom | base64 > "$passphrase_file.tmp" && mv "$passphrase_file.tmp" "$passphrase_file")
    echo "backup-local: made $passphrase_file (0600): keep a copy somewhere safe, the repo is useless without it"
fi

.venv/bin/pyinfra -y inventory/local.py deploys/backup.py
.venv/bin/pyinfra inventory/local.py fact facts.borg.BackupFreshness
