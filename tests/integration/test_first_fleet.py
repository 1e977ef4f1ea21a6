"""docs/first-fleet.md, followed literally on the test fleet: every `sh` block of the page runs as written, in
order, in one shell; every "Save as `FILE`:" block is saved as written. Only what the page lists under
"What you need first" is provided by the test: root SSH access to the hosts with the operator's key, borg on
the hosts (the fleet's hosts are this machine's overlays), and names that resolve (`backup.lan`, `web.lan`,
`db.lan`, in /etc/hosts of the hosts and, through a private mount namespace, of the operator's machine).

The operator's home is a fresh directory mounted on /root in that namespace: nothing of this machine's
/root (keys, known_hosts, pyinfra-backup state) helps, and nothing is left in it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import PROJECT, pyinfra

pytestmark = pytest.mark.fleet

PAGE = PROJECT / "docs" / "first-fleet.md"
NAMES = {"backup": "backup.lan", "web": "web.lan", "db": "db.lan"}
STEP = "::first-fleet::"
CLONE_PLACEHOLDER = "/path/to/pyinfra-backup"  # "write your clone's path"
CRON_PATH = "/usr/bin:/bin"  # cron's own


def page_script(text: str) -> tuple[str, list[str]]:
    """The page as one bash script (sh blocks as they are, saved files as quoted here-documents), with a
    marker line before each block, and the blocks' headings, in order."""
    lines, headings, heading, save_as = ["set -euo pipefail", "exec 2>&1"], [], "", None
    for match in re.finditer(r"^(#+ [^\n]*)$|^Save as `([^`]+)`:$|^```(\w+)\n(.*?)^```$", text, re.M | re.S):
        title, saved, lang, body = match.groups()
        if title:
            heading = title.lstrip("# ")
        elif saved:
            save_as = saved
        elif save_as:
            assert "PBK_END_OF_FILE" not in body
            lines += [f"echo {shlex.quote(f'{STEP} {len(headings)} save {save_as}')}",
                      f"cat > {shlex.quote(save_as)} <<'PBK_END_OF_FILE'\n{body}PBK_END_OF_FILE"]
            headings.append(f"{heading}: {save_as}")
            save_as = None
        elif lang == "sh":
            lines += [f"echo {shlex.quote(f'{STEP} {len(headings)} {heading}')}", body.rstrip("\n")]
            headings.append(heading)
        elif lang == "crontab":  # each entry's command, as cron runs it: from $HOME, with cron's environment
            lines.append(f"echo {shlex.quote(f'{STEP} {len(headings)} {heading}')}")
            for entry in body.splitlines():
                command = entry.split(None, 5)[5].replace(CLONE_PLACEHOLDER, str(PROJECT))
                lines.append(f'(cd && env -i HOME="$HOME" LOGNAME=root SHELL=/bin/sh PATH={CRON_PATH} '
                             f"/bin/sh -c {shlex.quote(command)})")
            headings.append(heading)
    return "\n".join(lines) + "\n", headings


def outputs(stdout: str) -> dict[int, str]:
    parts = re.split(rf"^{re.escape(STEP)} (\d+) .*$", stdout, flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def grand_total(output: str) -> list[str]:
    """pyinfra's last results row (Grand total, hosts): success, error, no change."""
    rows = [line.split() for line in output.splitlines() if line.strip().startswith("Grand total")]
    assert rows, output[-2000:]
    return rows[-1][3:]


def test_the_first_fleet_page_runs_as_written(fleet_factory, tmp_path):
    script, headings = page_script(PAGE.read_text())
    assert len(headings) >= 10, headings  # the page is what is tested, not an empty shell
    fleet = fleet_factory(list(NAMES))
    address = {name: fleet.host(name).address for name in NAMES}
    hosts_lines = "".join(f"{address[name]}\t{dns}\n" for name, dns in NAMES.items())
    for name in NAMES:  # "the names resolve the same way on your machine and on the hosts"
        with open(fleet.path(name, "/etc/hosts"), "a") as hosts:
            hosts.write(hosts_lines)
    original_motd = fleet.path("web", "/etc/motd").read_bytes() if fleet.path("web", "/etc/motd").exists() else b""

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    shutil.copy(fleet.key_path, home / ".ssh/id_ed25519")  # "SSH as root with that key works"
    shutil.copy(fleet.key_path.with_suffix(".pub"), home / ".ssh/id_ed25519.pub")
    etc_hosts = tmp_path / "hosts"
    etc_hosts.write_text(Path("/etc/hosts").read_text() + hosts_lines)
    (tmp_path / "page.sh").write_text(script)
    enter = (f"mount --make-rprivate / && mount --bind {shlex.quote(str(home))} /root && "
             f"mount --bind {shlex.quote(str(etc_hosts))} /etc/hosts && cd {shlex.quote(str(PROJECT))} && "
             f"exec bash {shlex.quote(str(tmp_path / 'page.sh'))}")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "USER": "root", "LOGNAME": "root", "TERM": "dumb"}
    proc = subprocess.run(["unshare", "--mount", "--", "bash", "-c", enter], env=env, capture_output=True,
                          text=True, timeout=900)
    (tmp_path / "page.log").write_text(proc.stdout)
    said = outputs(proc.stdout + "\n")
    last = max(said, default=-1)
    assert proc.returncode == 0, (f"the page stopped in step {last} ({headings[last] if last >= 0 else '-'}), "
                                  f"exit {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    assert last == len(headings) - 1, headings

    by_title = {heading.split(".")[0]: said[i] for i, heading in enumerate(headings) if heading[:1].isdigit()}
    success, error, _ = grand_total(by_title["6"])
    assert (success, error) == ("-", "-"), by_title["6"][-3000:]  # "every operation says No changes"
    freshness = by_title["7"]
    assert freshness.count('"status": "fresh"') == 2, freshness[-3000:]
    assert re.search(r"^web\s+system\s.*fresh", freshness, re.M), freshness[-3000:]
    assert re.search(r"^db\s+system\s.*fresh", freshness, re.M), freshness[-3000:]
    shown = [line.partition("]")[2].strip() for line in by_title["8"].splitlines() if line.startswith("[web]")]
    assert original_motd and [line for line in shown if line] == [
        line.strip() for line in original_motd.decode().splitlines() if line.strip()], by_title["8"][-2000:]
    assert fleet.path("web", "/etc/motd").read_bytes() == original_motd

    scheduled = by_title["10"]  # the report's line, from cron's environment; the backup run's output went to its log
    assert scheduled.strip().splitlines()[-1] == "3 hosts, 2 jobs: 2 fresh, 0 due, 0 stale, 0 missing, 0 error: OK", scheduled
    log = (tmp_path / "home/fleet/backup.log").read_text()
    assert grand_total(log)[:2] == ["-", "-"], log[-3000:]  # the scheduled run: nothing due, nothing failed

    # What the page promised along the way, seen on the hosts themselves.
    for client in ("web", "db"):
        passphrase = fleet.path(client, "/var/lib/pyinfra-backup/passphrase")
        assert oct(passphrase.stat().st_mode & 0o777) == "0o600" and len(passphrase.read_text().strip()) >= 40
        assert passphrase.read_text().strip() not in proc.stdout + proc.stderr  # never printed
        assert fleet.run("backup", f"test -f /var/lib/borgbackup/{client}/config && echo repo").stdout == "repo\n"

    # Step 4 again, and on a host whose file is empty: the passphrase is never replaced.
    inventory = fleet.write_inventory(tmp_path / "fleet.py", groups={"clients": ["web", "db"]})
    kept = fleet.path("web", "/var/lib/pyinfra-backup/passphrase").read_text()
    fleet.run("db", "mv /var/lib/pyinfra-backup/passphrase /root/p && : > /var/lib/pyinfra-backup/passphrase")
    again = pyinfra(inventory, "tasks.passphrase.generate", "--limit", "clients")
    assert again.returncode != 0 and "[web]    No changes" in again.stdout, again.stdout[-3000:]
    assert "db: /var/lib/pyinfra-backup/passphrase exists but is empty: not replaced" in again.stdout, again.stdout
    assert fleet.path("web", "/var/lib/pyinfra-backup/passphrase").read_text() == kept
    assert fleet.path("db", "/var/lib/pyinfra-backup/passphrase").read_text() == ""
