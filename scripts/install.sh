#!/usr/bin/env bash
# Install everything pyinfra-backup and its tests need, on Debian 12, as root. Idempotent:
# a second run installs nothing and takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    borgbackup openssh-server openssh-client   # the backup tool and the transport
    age rclone nix-bin                         # secrets, offsite copies, secrets.nix evaluation
    postgresql podman                          # stateful data in the fleet tests
    prometheus-node-exporter                   # metrics scraping in the fleet tests
    prometheus                                 # promtool: docs/monitoring alert rules checked and unit-tested
    git iproute2 util-linux procps psmisc      # the namespace test fleet
    sudo                                       # logins as a normal user with sudo in the fleet tests
    python3 python3-venv systemd              # systemd-analyze: calendar specs checked against systemd
)
UV_VERSION=0.13.9

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "install: apt packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The virtual environment lives at .venv (uv's default), built from Debian's Python and uv.lock.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
if ! .venv/bin/uv --version 2>/dev/null | grep -q "$UV_VERSION"; then
    .venv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
export UV_PYTHON_DOWNLOADS=never
.venv/bin/uv sync -q --frozen --inexact --python .venv/bin/python

# Runs from any directory: the project root on the venv's sys.path, so that pyinfra finds deploys/, tasks/ and
# facts/ (and `python -m pyinfra_backup.report` its package) wherever it is started.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ "$(cat "$site/pyinfra-backup-root.pth" 2>/dev/null)" = "$PWD" ] || echo "$PWD" > "$site/pyinfra-backup-root.pth"
