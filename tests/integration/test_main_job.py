"""The README's first command, run twice inside a fleet host (its own overlay of this machine)."""

import json
import re
import shutil

import pytest

from tests.integration.helpers import PROJECT

pytestmark = pytest.mark.fleet


def project_in_host(fleet, name: str) -> None:
    """The host sees this machine's files through its overlay, but not under its own tmpfs /tmp and /run:
    a checkout there (a CI clone in /tmp, say) is copied in at the same path."""
    if fleet.run(name, f"test -x {PROJECT}/.venv/bin/pyinfra", check=False).returncode != 0:
        shutil.copytree(PROJECT, fleet.path(name, str(PROJECT)), symlinks=True,
                        ignore=shutil.ignore_patterns(".state", ".git"), dirs_exist_ok=True)


def test_main_job_twice_second_run_changes_nothing(fleet):
    project_in_host(fleet, "host05")
    # the host's root is an overlay of this machine's: start from a machine that never ran the main job
    fleet.run("host05", "rm -rf /var/lib/pyinfra-backup /var/backups/pyinfra-backup /root/.cache/borg /root/.config/borg")
    first = fleet.run("host05", f"cd {PROJECT} && bash scripts/backup-local.sh 2>&1", timeout=600)
    assert "Backup jobs: local" in first.stdout and re.search(r"\[@local\] Success", first.stdout)
    assert fleet.run("host05", "stat -c '%a %U' /var/lib/pyinfra-backup/local-passphrase").stdout.split() == ["600", "root"]
    second = fleet.run("host05", f"cd {PROJECT} && bash scripts/backup-local.sh 2>&1", timeout=600)
    assert "] Success" not in second.stdout and "made /var/lib" not in second.stdout
    table = second.stdout[second.stdout.index("--> Results:"):second.stdout.index("Grand total")]
    rows = [line.split() for line in table.splitlines()[2:] if line.strip()]
    assert rows and all(row[-4:] == ["1", "-", "-", "1"] for row in rows), table  # hosts, success, error, no change
    fact = second.stdout[second.stdout.rindex("{\n    \"@local\""):]
    entry = json.loads(fact[:fact.rindex("}") + 1])["@local"]["local"]
    assert entry["status"] == "fresh" and entry["last_archive"].startswith("host05-local-")
