"""`python -m bench --head ...`: benchmark the committed HEAD, not the shared working tree.

Other people edit the project's files while a benchmark runs; a half-made change can make a run
crash or measure code nobody committed. With --head the bench copies `git archive HEAD` (plus the
working tree's bench/) into a temporary directory and runs itself there, with that copy first on
sys.path (ahead of the editable install's finder) and as pyinfra's working directory. The results
still go to this tree's bench/results.json. Imports nothing of the project: the working tree's
code may be broken.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
MARK = "PBK_BENCH_HEAD"  # set in the child: the commit it runs


def run_at_head(argv: list[str]) -> int:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, check=True, capture_output=True,
                            text=True).stdout.strip()
    snap = Path(tempfile.mkdtemp(prefix="pbk-bench-head-"))
    child = None
    try:
        archive = subprocess.Popen(["git", "archive", commit], cwd=PROJECT, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(snap)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise SystemExit("git archive HEAD failed")
        shutil.rmtree(snap / "bench", ignore_errors=True)
        shutil.copytree(PROJECT / "bench", snap / "bench",
                        ignore=shutil.ignore_patterns("__pycache__", "results.json", "profiles"))
        output, rest, args = str(PROJECT / "bench" / "results.json"), [], iter(argv)
        for arg in args:  # --output is resolved here: the child runs in the copy
            if arg == "--output":
                output = str(Path(next(args, output)).resolve())
            elif arg.startswith("--output="):
                output = str(Path(arg.split("=", 1)[1]).resolve())
            else:
                rest.append(arg)
        env = {**os.environ, MARK: commit, "PYTHONPATH": os.pathsep.join(filter(None, [str(snap), os.environ.get("PYTHONPATH")]))}
        print(f"[bench] benchmarking HEAD {commit[:12]} from a copy in {snap}", file=sys.stderr, flush=True)
        child = subprocess.Popen([sys.executable, "-m", "bench", *rest, "--output", output], cwd=snap, env=env)
        signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # the child got the same SIGINT and tears its fleets down
                continue
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            child.wait()
        shutil.rmtree(snap, ignore_errors=True)
