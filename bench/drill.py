"""The restore drill against a full `borg extract`, and `borg check --repository-only` against a full check.

    .venv/bin/python -m bench.drill [--files 2000] [--size 94000] [--repeat 3]

On this machine, in a temporary directory: a local repokey-blake2 repo holding one archive of FILES files
of SIZE bytes in 40 directories (one in three random, the others text), then medians of REPEAT runs of
each command. A benchmark, not a test: it prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from pyinfra_backup.borg import Job, Location
from pyinfra_backup.drill import drill_script, parse_drill

WORDS = b"backup borg pyinfra fleet restore drill verify check segment archive".split()


def make_data(root: Path, files: int, size: int) -> None:
    rng = random.Random(1)
    for i in range(files):
        directory = root / f"d{i % 40:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        body = os.urandom(size) if i % 3 == 0 else b" ".join(rng.choice(WORDS) for _ in range(size // 6))[:size]
        (directory / f"f{i:05d}").write_bytes(body)


def timed(argv: list[str], env: dict, cwd: str = "/") -> float:
    started = time.monotonic()
    subprocess.run(argv, env=env, cwd=cwd, check=True, capture_output=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=94000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-drill-") as tmp:
        root = Path(tmp)
        make_data(root / "data", args.files, args.size)
        repo = str(root / "repo")
        env = {**os.environ, "BORG_PASSPHRASE": "bench", "TZ": "UTC"}
        subprocess.run(["borg", "init", "-e", "repokey-blake2", repo], env=env, check=True, capture_output=True)
        archive = "bench-system-2026-01-01T00:00:00"
        subprocess.run(["borg", "create", "--compression", "auto,zstd", f"{repo}::{archive}", str(root / "data")],
                       env=env, cwd="/", check=True, capture_output=True)
        job = Job.from_data("system", {"repo": repo, "paths": [str(root / "data")],
                                       "encryption": {"mode": "repokey-blake2", "passCommand": "echo bench"}})

        def drill(files: int, max_bytes: int = 64 << 20) -> float:
            script = drill_script(job, Location(repo), archive, files, max_bytes, str(root / "last-drill"),
                                  scratch_dir=str(root / "scratch"))
            started = time.monotonic()
            run = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
            report = parse_drill(run.stdout.splitlines())
            assert not report.failed and report.compared == report.selected > 0, run.stdout + run.stderr
            return time.monotonic() - started

        def extract() -> float:
            target = tempfile.mkdtemp(dir=root)
            seconds = timed(["borg", "extract", f"{repo}::{archive}"], env, cwd=target)
            subprocess.run(["rm", "-rf", target], check=True)
            return seconds

        cases = {
            "full `borg extract` of the archive": extract,
            "drill, the defaults (32 files, at most 64 MiB)": lambda: drill(32),
            "drill, 200 files (at most 1 GiB)": lambda: drill(200, 1 << 30),
            "`borg check --repository-only`": lambda: timed(["borg", "check", "--repository-only", repo], env),
            "`borg check` (repository + archives)": lambda: timed(["borg", "check", repo], env),
            "`borg check --verify-data`": lambda: timed(["borg", "check", "--verify-data", repo], env),
        }
        print(f"{args.files} files x {args.size} bytes, local repo, median of {args.repeat}; "
              f"load average {os.getloadavg()[0]:.2f}\n")
        print("| command | seconds |\n|---|---|")
        for label, case in cases.items():
            print(f"| {label} | {statistics.median(case() for _ in range(args.repeat)):.2f} |")


if __name__ == "__main__":
    main()
