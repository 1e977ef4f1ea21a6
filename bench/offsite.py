"""Benchmark of the offsite copy (tasks/offsite.py) against raw rclone, on a fleet of its own.

    .venv/bin/python -m bench.offsite [--mb 150] [--reps 3]

A client backs up --mb MB of random data to `backup` (untimed); then, alternately:
- first copy: `pyinfra -y INV tasks.offsite.copy --limit backup` into an empty sftp directory on
  `vault` (sync + check + record + pyinfra), vs the raw `rclone sync` of the same repo with the same
  remote (run inside `backup`, no ssh to it), and raw `rclone sync` + `rclone check`; in MB/s of repo size.
- no-op: the same pyinfra command once the copy is recorded, vs bench/noop_deploy.py (one fact).
Prints medians; the fleet is always torn down.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from pyinfra_backup import rclone  # noqa: E402
from pyinfra_backup.offsite import EXCLUDES, RECORDS_DIR, Offsite  # noqa: E402
from tests.fleet import Fleet, cleanup_leftovers, install_teardown_handlers  # noqa: E402
from tests.integration.test_offsite_fleet import COPIES, REPO, job, offsite, prepare_vault  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def timed(argv_or_fn) -> float:
    start = time.perf_counter()
    if callable(argv_or_fn):
        argv_or_fn()
    else:
        subprocess.run(argv_or_fn, cwd=PROJECT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=150)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    install_teardown_handlers()
    cleanup_leftovers()
    with tempfile.TemporaryDirectory() as tmp, Fleet() as fleet:
        tmp = Path(tmp)
        fleet.up(["host01", "backup", "vault"])
        prepare_vault(fleet, tmp)
        fleet.run("host01", f"printf pp > /root/borg-pass && mkdir -p /srv/data && "
                            f"head -c {args.mb * 1000000} /dev/urandom > /srv/data/blob")
        data = {"host01": {"borgbackup": {"jobs": {"system": job()}}},
                "backup": {"borgbackup": {"repos": {}, "offsite": offsite(fleet)}}}
        inventory = fleet.write_inventory(tmp / "inventory.py", data, {"clients": ["host01"], "servers": ["backup"]})
        pyinfra = [PYINFRA, "-y", str(inventory)]
        subprocess.run([*pyinfra, "deploys/backup_server.py"], cwd=PROJECT, check=True, capture_output=True)
        subprocess.run([*pyinfra, "deploys/backup.py"], cwd=PROJECT, check=True, capture_output=True)  # copies too
        size = int(fleet.run("backup", f"du -sb {REPO}").stdout.split()[0])
        remote = Offsite.from_data(data["backup"]).remote
        raw_sync = rclone.command(remote, rclone.sync_argv(REPO, "offsite:raw/host01", EXCLUDES))
        raw_check = rclone.command(remote, rclone.check_argv(REPO, "offsite:raw/host01", EXCLUDES))
        copy = [*pyinfra, "tasks.offsite.copy", "--limit", "backup"]

        def empty_vault():
            fleet.run("vault", f"rm -rf {COPIES} /srv/vault/raw")
            fleet.run("backup", f"rm -rf {RECORDS_DIR}")

        samples = {"ours": [], "raw sync": [], "raw sync + check": []}
        for rep in range(args.reps):
            order = ["ours", "raw sync", "raw sync + check"]
            for name in order[rep % 3:] + order[:rep % 3]:
                empty_vault()
                if name == "ours":
                    samples[name].append(timed(copy))
                else:
                    script = raw_sync if name == "raw sync" else f"{raw_sync} && {raw_check}"
                    samples[name].append(timed(lambda: fleet.run("backup", script)))
        noop = {"ours": [], "one-fact deploy": []}
        for rep in range(max(args.reps, 5)):
            for name in (("ours", "one-fact deploy") if rep % 2 == 0 else ("one-fact deploy", "ours")):
                argv = copy if name == "ours" else [*pyinfra, "bench/noop_deploy.py", "--limit", "backup"]
                noop[name].append(timed(argv))
    print(f"repo {size / 1e6:.1f} MB, {args.reps} repetitions, medians (load {open('/proc/loadavg').read().split()[0]})")
    print("| first copy | wall | MB/s |\n|---|---|---|")
    for name, values in samples.items():
        wall = statistics.median(values)
        print(f"| {name} | {wall:.2f} s | {size / 1e6 / wall:.1f} |")
    print("| no-op | wall |\n|---|---|")
    for name, values in noop.items():
        print(f"| {name} | {statistics.median(values):.2f} s |")


if __name__ == "__main__":
    main()
