#!/usr/bin/env bash
# The whole test suite: unit tests, the namespace SSH test fleet, fleet integration tests.
# Installs what it needs first (idempotent). Needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/pytest -q "$@"
