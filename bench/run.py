"""Benchmarks (not timed tests) of deploys/backup.py against the raw tools, on fleets of our own.

    .venv/bin/python -m bench [--head] [--hosts N] [--quick] [--sizes 10,30,100] [--only a,b,c,d]
    .venv/bin/python -m bench --head --only c,d,e --sizes 10,30,100,300   # the curves to 300 hosts

(a) forced backup of unchanged data on N clients + a repo server: `pyinfra -y INV deploys/backup.py
    --data backup_force=true` vs the same `borg create` command line our tool runs (same repo URL,
    BORG_RSH with the client's backup key, BORG_PASSCOMMAND, compression, lock wait), run on every
    client at once over OpenSSH from this machine. Target: ratio <= 1.3.
(b) first backup into fresh (just initialised, empty) repos: our deploy vs raw `borg create`, as
    bytes/s (sum of the archives' original sizes / wall time). Target: ours >= 95 % of raw. Measured
    with the (a) data (--mb, 30 MB per client) and again with --mb-large (300 MB per client), next to
    the pyinfra floor: the one-op deploy of (c) on the same fleet, what any pyinfra run costs here.
(c) no-op run of deploys/backup.py on 30 hosts vs a one-operation pyinfra deploy (bench/noop_deploy.py)
    on the same fleet and inventory. Target: ratio <= 1.2; remote commands per host (sshd exec
    requests) on that run <= 2, client and server reported apart.
(d) the same no-op run on 10, 30 and 100 hosts (300 with --sizes): wall time, per host, and the
    controller's CPU and peak memory (the pyinfra process).
(e) on the same growing fleet (not run by default: --only c,d,e): a forced backup of every client,
    ours (`--data backup_force=true`, create-only job) vs the raw `borg create` of (a) over OpenSSH,
    both `--forced-parallel` hosts at a time.

Every ratio is measured against the baseline on the same fleet in the same run: after a warm-up ((a):
the runs of (b); (b): the enrollment run; (c)/(d): the verification run and one baseline run),
repetitions in alternating order (ours/baseline, baseline/ours, ...), medians reported.
Both sides of (c)/(d) run with `--parallel <number of hosts>` (pyinfra's default is
min(20 x CPUs, hosts) = 40 here, which would serialise a 100-host run into three waves).

Writes bench/results.json and prints a markdown table. The fleets are always torn down.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import resource
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from facts.borg import BorgClient  # noqa: E402
from pyinfra_backup.borg import BACKUP_KEY, STATE_DIR, Job, borg_env, create_argv, init_argv, parse_create  # noqa: E402
from pyinfra_backup.enrollment import REPO_BASE, Server, client_location, plan_jobs  # noqa: E402
from pyinfra_backup.shell import with_env  # noqa: E402
from bench.fleets import Fleets  # noqa: E402
from tests.fleet import Fleet, cleanup_leftovers, install_teardown_handlers  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))  # the venv's pyinfra, also for a --head copy
RESULTS = PROJECT / "bench" / "results.json"
HEAD_COMMIT = os.environ.get("PBK_BENCH_HEAD")  # set when running from a copy of HEAD (--head)
SERVER = "backup"
JOB = "system"
LOCK_WAIT = 60  # our tool's default `borgbackup.lockWait`: the raw command gets the same --lock-wait
RAW_STATS = "/tmp/bench-raw-create.json"
TARGETS = {"a": 1.3, "b": 0.95, "c": 1.2, "c_exec": 2}

# Per-host data, made inside the host: `files` files in 40 directories, `total` bytes in all, every
# third file random bytes (incompressible), the others text (zstd compresses it about 3x). Seeded by
# host name: reproducible, and different on every host.
DATA_SCRIPT = r"""
set -e
umask 022
rm -rf {path} && mkdir -p {path}
python3 - {path} {files} {total} "$(uname -n)" <<'PY'
import os, random, sys
root, files, total, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(seed)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(4000)]
lines = [b" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) + b"\n" for _ in range(20000)]
pool = b"".join(lines)
avg = max(1, total // files)
for i in range(files):
    d = os.path.join(root, "d%02d" % (i % 40))
    os.makedirs(d, exist_ok=True)
    size = rng.randint(avg // 2, avg + avg // 2)
    if i % 3 == 0:
        data = rng.randbytes(size)
    else:
        start = rng.randrange(0, len(pool) - size) if size < len(pool) else 0
        data = pool[start:start + size]
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(data)
PY
umask 077 && printf '%s' "$BENCH_PASS" > /root/borg-pass
"""


# ---------------------------------------------------------------- measuring


def run_measured(argv: list[str], timeout: float, **kwargs) -> tuple[subprocess.CompletedProcess, int]:
    """Run a process to its end, output captured (stderr into stdout); also its peak RSS in KiB (wait4)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
        proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return subprocess.CompletedProcess(argv, proc.returncode, out, None), usage.ru_maxrss


def _machine_busy() -> float:
    """CPU-seconds this machine has spent busy so far (all processes, all cores)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    wall: float  # seconds
    controller_cpu: float  # user+sys CPU-seconds of the processes we started on this machine (pyinfra / ssh)
    machine_cpu: float  # CPU-seconds the whole machine was busy (hosts' borg/sshd included; other users too)
    controller_rss_mb: float | None = None  # peak memory of the pyinfra process (None: not one process)


class Meter:
    def __enter__(self) -> Meter:
        self._ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._busy = _machine_busy()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru.ru_utime - self._ru.ru_utime) + (ru.ru_stime - self._ru.ru_stime)
        self.sample = Sample(round(wall, 4), round(cpu, 3), round(_machine_busy() - self._busy, 2))


def median(samples: list[Sample], key: str = "wall") -> float:
    return round(statistics.median(getattr(s, key) for s in samples), 4)


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the environment


@dataclass
class Env:
    fleet: Fleet
    work: Path
    op_key: Path
    clients: list[str] = field(default_factory=list)
    passphrases: dict[str, str] = field(default_factory=dict)
    job: dict = field(default_factory=dict)
    inventory: Path | None = None
    template: str = ""
    escrow: list[str] = field(default_factory=list)  # borgbackup.escrow.recipients of every client (--escrow)

    @property
    def pyinfra_env(self) -> dict:
        # A bytecode cache, as on a user's machine: this sandbox sets PYTHONDONTWRITEBYTECODE=1, which
        # makes every pyinfra start compile its imports again (~0.5 s). The cache lives outside the tree.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        borg_dir = str(self.work / "operator-borg")
        return {**env, "BORG_BASE_DIR": borg_dir, "PYINFRA_BACKUP_BORG_BASE_DIR": borg_dir,
                "PYINFRA_BACKUP_STATE": str(self.work / "operator-state"),
                "PYTHONPYCACHEPREFIX": str(self.work / "pycache")}

    def host_data(self) -> dict:
        common = {"borgbackup": {"jobs": {JOB: self.job}, "operatorIdentity": str(self.op_key),
                                 **({"escrow": {"recipients": self.escrow}} if self.escrow else {})}}
        data = {name: common for name in self.clients}
        data[SERVER] = {"borgbackup": {"repos": {}, "operatorKeys": [self.op_key.with_suffix(".pub").read_text().strip()]}}
        return data

    def write_inventory(self, name: str) -> Path:
        self.inventory = self.fleet.write_inventory(
            self.work / name, self.host_data(), {"clients": list(self.clients), "servers": [SERVER]}
        )
        return self.inventory

    def hosts(self) -> list[str]:
        return [*self.clients, SERVER]

    # -- running things

    def pyinfra(self, *args: str, parallel: int | None = None, check: bool = True, timeout: int = 900):
        argv = [PYINFRA, "-y", *(["--parallel", str(parallel)] if parallel else []), str(self.inventory), *args]
        debug_log = PROJECT / "pyinfra-debug.log"  # pyinfra writes it into its cwd on an internal error
        had_log = debug_log.exists()
        with Meter() as m:
            proc, peak_kb = run_measured(argv, timeout, cwd=PROJECT, env=self.pyinfra_env)
        m.sample.controller_rss_mb = round(peak_kb / 1024, 1)
        if not had_log and debug_log.exists():
            debug_log.replace(self.work.parent / f"pyinfra-debug-{os.getpid()}.log")
        if check and proc.returncode != 0:
            raise BenchError(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
        return m.sample, proc

    def ssh_all(self, commands: dict[str, str], timeout: int = 900,
                parallel: int | None = None) -> tuple[Sample, dict[str, subprocess.CompletedProcess]]:
        """Run one command per host over OpenSSH from this machine, all at once (or `parallel` at a time,
        as pyinfra's --parallel does); wait for all."""
        def one(name):
            return subprocess.run(self.fleet.ssh_command(name, commands[name]), capture_output=True, text=True,
                                  timeout=timeout)
        with Meter() as m, concurrent.futures.ThreadPoolExecutor(parallel or len(commands)) as pool:
            results = dict(zip(commands, pool.map(one, commands)))
        failed = {name: r for name, r in results.items() if r.returncode != 0}
        if failed:
            name, r = next(iter(failed.items()))
            raise BenchError(f"{len(failed)} hosts failed; {name} exited {r.returncode}: {r.stderr[-3000:]}")
        return m.sample, results

    def in_hosts(self, names: list[str], script: str, env_of=None) -> None:
        """fleet.run (nsenter, not ssh) on several hosts at once."""
        def one(name):
            prefix = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (env_of(name) if env_of else {}).items())
            self.fleet.run(name, prefix + script, timeout=600)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(one, names))

    def exec_counts(self) -> dict[str, int]:
        return {name: self.fleet.exec_count(name) for name in self.hosts()}

    # -- the raw tool's command lines, built by the same functions our operations use

    def server(self) -> Server:
        return Server.from_data(SERVER, {**self.fleet.connection_data(SERVER), **self.host_data()[SERVER]})

    def raw_create_command(self, client: str) -> str:
        job = Job.from_data(JOB, self.job)
        location = client_location(self.server(), client)
        argv = create_argv(job, job.base_name(client), location.url, LOCK_WAIT)
        return f"cd / && {with_env(borg_env(job, location), argv)} > {RAW_STATS}"

    def raw_init_command(self, client: str) -> str:
        job = Job.from_data(JOB, self.job)
        location = client_location(self.server(), client)
        return with_env(borg_env(job, location), init_argv(job, location))

    def fact_command(self, client: str) -> str:
        """The one remote command our no-op run needs on a client (the BorgClient fact's script)."""
        data = {**self.fleet.connection_data(client), **self.host_data()[client]}
        plan = plan_jobs(client, data, {SERVER: self.server()})
        return BorgClient().command(plan)


def created(proc: subprocess.CompletedProcess, clients: int) -> None:
    """The run's results table must say that the backup operation (whose create, forced or due in
    these runs, fails it when borg fails) succeeded on every client."""
    m = re.search(rf"^\s*Backup jobs: {JOB}\s+(\d+)\s+(\d+)\s", proc.stdout, re.M)
    if not m or int(m.group(2)) != clients:
        raise BenchError(f"borg create did not succeed on all {clients} clients:\n{proc.stdout[-6000:]}")


def spaced(last: list[float], gap: float = 1.1) -> None:
    """Archive names have second resolution: keep runs that create archives over a second apart."""
    wait = last[0] + gap - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    last[0] = time.monotonic()


def alternate(reps: int, ours, base) -> tuple[list[Sample], list[Sample]]:
    """Repetitions in alternating order; each callable returns a Sample."""
    a, b = [], []
    for i in range(reps):
        if i % 2 == 0:
            a.append(ours())
            b.append(base())
        else:
            b.append(base())
            a.append(ours())
    return a, b


# ---------------------------------------------------------------- (a) and (b): real data, 5 clients


def bench_ab(args, work: Path, op_key: Path, results: dict) -> None:
    n = args.hosts
    clients = [f"host{i:02d}" for i in range(1, n + 1)]
    fleet = Fleet()
    try:
        fleet.up([*clients, SERVER])
        env = Env(fleet, work, op_key, clients=clients)
        env.passphrases = {c: "bench-" + secrets.token_hex(12) for c in clients}
        # No prune.keep, no checks: the job is create only, so that the deploy and raw borg do the
        # same borg work (a forced run with prune.keep would add a prune + compact per run).
        env.job = {
            "paths": ["/srv/bench"],
            "repo": f"borg@{SERVER}:.",
            "encryption": {"mode": "repokey-blake2", "passCommand": "cat /root/borg-pass"},
            "compression": "auto,zstd",
            "startAt": "daily",
        }
        log(f"(a)(b) fleet of {n} clients + {SERVER} up; making {args.files} files / {args.mb} MB per client")
        env.in_hosts(clients, DATA_SCRIPT.format(path="/srv/bench", files=args.files, total=args.mb * 10**6),
                     env_of=lambda c: {"BENCH_PASS": env.passphrases[c]})
        env.write_inventory("inventory-ab.py")
        first, proc = env.pyinfra("deploys/backup.py")
        created(proc, n)
        log(f"first run (enrollment + init + first backup): {first.wall:.1f}s")
        raw_cmds = {c: env.raw_create_command(c) for c in clients}
        init_cmds = {c: env.raw_init_command(c) for c in clients}
        last = [0.0]
        stored: dict = {}

        # -- (b) first backup into fresh repos: emptied on the server, forgotten by the clients, then
        # initialised (untimed) with the command line of our init operation, the same for both sides.
        def reset_repos():
            fleet.run(SERVER, " && ".join(f"find {REPO_BASE}/{c} -mindepth 1 -delete" for c in clients))
            env.in_hosts(clients, f"rm -rf /root/.cache/borg /root/.config/borg {STATE_DIR}/jobs")  # a new host: no records
            env.ssh_all(init_cmds)

        def ours_first():
            reset_repos()
            spaced(last)
            sample, proc = env.pyinfra("deploys/backup.py")
            created(proc, n)
            return sample

        def raw_first():
            reset_repos()
            spaced(last)
            sample, _ = env.ssh_all(raw_cmds)
            stats = [parse_create(fleet.run(c, f"cat {RAW_STATS}").stdout) for c in clients]
            stored.update(bytes=sum(s["original_size"] for s in stats), files=sum(s["nfiles"] for s in stats))
            return sample

        # What any pyinfra deploy costs on this fleet besides its operations (start, connect, one fact
        # per host, disconnect): the one-op deploy of (c). Raw borg over OpenSSH has no such cost.
        env.pyinfra("bench/noop_deploy.py")  # warm-up
        floor = [env.pyinfra("bench/noop_deploy.py")[0] for _ in range(3)]
        results["pyinfra_floor"] = {"what": f"bench/noop_deploy.py on the (a)/(b) fleet ({n} clients + {SERVER})",
                                    "samples": [asdict(s) for s in floor], "median_s": median(floor)}
        log(f"pyinfra floor (one-op deploy) on this fleet: {median(floor):.2f}s")

        def first_backups(reps: int, warm: int) -> dict:
            stored.clear()
            for _ in range(warm):
                ours_first(), raw_first()
            ours_b, raw_b = alternate(reps, ours_first, raw_first)
            total_bytes = stored["bytes"]
            tp_ours, tp_raw = total_bytes / median(ours_b), total_bytes / median(raw_b)
            above_floor = median(raw_b) / (median(ours_b) - median(floor))
            log(f"(b) {total_bytes / 1e6:.0f} MB: ours {median(ours_b):.2f}s raw {median(raw_b):.2f}s -> {tp_ours / tp_raw:.1%}"
                f" ({above_floor:.1%} above the pyinfra floor)")
            return {
                "what": f"first backup into fresh repos, {n} clients at once, {stored['files']} files, {total_bytes} bytes in all",
                "clients": n, "bytes": total_bytes, "files": stored["files"],
                "ours": [asdict(s) for s in ours_b], "raw": [asdict(s) for s in raw_b],
                "ours_median_s": median(ours_b), "raw_median_s": median(raw_b),
                "ours_bytes_per_s": round(tp_ours), "raw_bytes_per_s": round(tp_raw),
                "ours_machine_cpu_s": median(ours_b, "machine_cpu"), "raw_machine_cpu_s": median(raw_b, "machine_cpu"),
                "ratio": round(tp_ours / tp_raw, 3), "target": f">= {TARGETS['b']}", "met": tp_ours / tp_raw >= TARGETS["b"],
                "ratio_above_pyinfra_floor": round(above_floor, 3),
            }

        log(f"(b) first backup, fresh repos: {args.reps_b} reps each (+{args.warm_b} warm-up each)")
        results["b"] = {**first_backups(args.reps_b, args.warm_b), "first_enrollment_run": asdict(first)}

        # -- (a) forced backup of unchanged data
        def ours_forced():
            spaced(last)
            before = env.exec_counts()
            sample, proc = env.pyinfra("deploys/backup.py", "--data", "backup_force=true")
            forced_exec.update({h: c - before[h] for h, c in env.exec_counts().items()})
            created(proc, n)
            return sample

        def raw_forced():
            spaced(last)
            return env.ssh_all(raw_cmds)[0]

        log(f"(a) forced backup of unchanged data: {args.reps_a} reps each (warmed up by (b))")
        forced_exec: dict = {}
        ours_a, raw_a = alternate(args.reps_a, ours_forced, raw_forced)
        ratio = median(ours_a) / median(raw_a)
        results["a"] = {
            "what": f"forced backup of unchanged data, {n} clients at once ({args.files} files, {args.mb} MB each)",
            "clients": n, "ours": [asdict(s) for s in ours_a], "raw": [asdict(s) for s in raw_a],
            "ours_median_s": median(ours_a), "raw_median_s": median(raw_a),
            "ours_controller_cpu_s": median(ours_a, "controller_cpu"), "raw_controller_cpu_s": median(raw_a, "controller_cpu"),
            "ours_machine_cpu_s": median(ours_a, "machine_cpu"), "raw_machine_cpu_s": median(raw_a, "machine_cpu"),
            "ratio": round(ratio, 3), "target": f"<= {TARGETS['a']}", "met": ratio <= TARGETS["a"],
            "raw_command_example": raw_cmds[clients[0]],
            "exec_requests_one_forced_run": forced_exec,
        }
        log(f"(a) ours {median(ours_a):.2f}s raw {median(raw_a):.2f}s -> {ratio:.2f}x")

        # -- (b) again with more data per client: a first backup of a real host is larger, and the
        # fixed cost of a pyinfra run (the floor above) weighs less in its throughput.
        if args.mb_large:
            log(f"(b) larger first backup: {args.mb_large} MB per client, {args.reps_b_large} reps each (+1 warm-up each)")
            env.in_hosts(clients, DATA_SCRIPT.format(path="/srv/bench", files=args.files, total=args.mb_large * 10**6),
                         env_of=lambda c: {"BENCH_PASS": env.passphrases[c]})
            results["b_large"] = first_backups(args.reps_b_large, 1)  # the first run after new data is slower
    finally:
        fleet.down()


# ---------------------------------------------------------------- (c) and (d): no-op runs, growing fleet


CLONE_SCRIPT = r"""
set -e
rm -f {key} {key}.pub
ssh-keygen -q -t ed25519 -N '' -C "pyinfra-backup@$(uname -n)" -f {key}
""".format(key=BACKUP_KEY)


def clone_state(fleet: Fleet, template: str, clone: str) -> None:
    """The template client's state directory (pinned known_hosts, job records, check stamps), as the
    machine sees both hosts' roots; the clone then makes its own backup key."""
    shutil.copytree(fleet.path(template, STATE_DIR), fleet.path(clone, STATE_DIR), symlinks=True, dirs_exist_ok=True)


def bench_cd(args, work: Path, op_key: Path, results: dict) -> None:
    """A fleet that grows to each size in turn. The first client is enrolled and backed up by the
    deploy itself; the later ones are clones of it (its repo copied on the server, its state directory
    with the pinned known_hosts and job records, their own backup key), which the deploy then takes as they are: the
    verification run must report No changes on every host, or the bench stops. Cloning keeps the
    setup of 300 hosts within the time budget (a first run costs ~7 borg processes per client).
    With (e), each size also gets forced backups, ours against raw `borg create` on every client."""
    fleet = Fleets()  # past 254 hosts, a second slot of the family
    results["d"] = stages = []
    if "e" in args.only_set:
        results["e"] = forced_stages = []
    try:
        env = Env(fleet, work, op_key)
        if args.escrow:  # every key and passphrase escrowed: the no-op run's check of the key digest is measured
            import pyrage
            env.escrow = [str(pyrage.x25519.Identity.generate().to_public())]
        # archiveBaseName is the same on every client (each has its own repo): a cloned repo's
        # archive is then the clone's own.
        env.job = {
            "paths": ["/srv/small"],
            "repo": f"borg@{SERVER}:.",
            "encryption": {"mode": "repokey-blake2", "passCommand": "cat /root/borg-pass"},
            "archiveBaseName": "bench",
            "startAt": "monthly",
            "prune": {"keep": {"daily": 1}},
            "checks": {"frequency": "30d"},
        }
        passphrase = "bench-" + secrets.token_hex(12)
        for size in args.sizes:
            grow(env, size, passphrase)
            stages.append(noop_stage(args, env, results))
            if "e" in args.only_set:
                forced_stages.append(forced_stage(args, env))
    finally:
        fleet.down()


def grow(env: Env, size: int, passphrase: str) -> None:
    """Grow the fleet to `size` hosts (clients cloned from the first), authorised on the server."""
    fleet, first = env.fleet, not env.clients
    new = [f"host{i:03d}" for i in range(len(env.clients) + 1, size)]
    log(f"(c)(d) growing the fleet to {size} hosts: {len(new)} new clients")
    if first:
        fleet.up([SERVER], group="servers")
    fleet.up(new, group="clients")
    env.in_hosts(new, DATA_SCRIPT.format(path="/srv/small", files=20, total=200_000),
                 env_of=lambda c: {"BENCH_PASS": passphrase})
    clones = new
    if first:
        env.template, clones = new[0], new[1:]
        env.clients = [env.template]
        env.write_inventory("inventory-template.py")
        sample, _ = env.pyinfra("deploys/backup.py")
        log(f"  {env.template} enrolled and backed up by the deploy: {sample.wall:.1f}s")
    if clones:
        for c in clones:
            clone_state(fleet, env.template, c)
        env.in_hosts(clones, CLONE_SCRIPT)
        fleet.run(SERVER, "; ".join(f"cp -a {REPO_BASE}/{env.template} {REPO_BASE}/{c}" for c in clones), timeout=600)
    env.clients += clones
    env.write_inventory(f"inventory-{size}.py")
    assert len(env.hosts()) == size, (len(env.hosts()), size)
    sample, _ = env.pyinfra("deploys/backup_server.py", parallel=size)
    log(f"  clones authorised on {SERVER} (deploys/backup_server.py): {sample.wall:.1f}s")


def noop_stage(args, env: Env, results: dict) -> dict:
    """(c)/(d) at the fleet's current size: our no-op run against the one-op deploy."""
    hosts = len(env.hosts())
    if args.escrow:  # the clones' keys and passphrases escrowed first (the template's were at enrollment)
        env.pyinfra("deploys/backup.py", parallel=hosts)
    # The verification run is also the warm-up, and the one whose remote commands we count.
    before = env.exec_counts()
    verify, proc = env.pyinfra("deploys/backup.py", "-v", parallel=hosts)
    mid = env.exec_counts()
    if "] Success" in proc.stdout or "No changes" not in proc.stdout:
        raise BenchError(f"the run on {hosts} hosts is not a no-op:\n{proc.stdout[-6000:]}")
    env.pyinfra("bench/noop_deploy.py", parallel=hosts)
    after = env.exec_counts()
    ours_exec = {h: mid[h] - before[h] for h in before}
    base_exec = {h: after[h] - mid[h] for h in before}
    log(f"  verified no-op: {verify.wall:.1f}s; remote commands: {ours_exec[env.clients[0]]} on a client, "
        f"{ours_exec[SERVER]} on {SERVER}")

    reps = args.reps_cd if hosts == 30 else min(3, args.reps_cd) if hosts < 30 else args.reps_cd_big
    floor_reps = args.reps_floor.get(hosts, 0)
    log(f"  no-op runs on {hosts} hosts: {reps} reps each, --parallel {hosts}; {floor_reps} of the fact floor")
    ours, base = alternate(reps, lambda: env.pyinfra("deploys/backup.py", parallel=hosts)[0],
                           lambda: env.pyinfra("bench/noop_deploy.py", parallel=hosts)[0])
    fact_cmds = {c: env.fact_command(c) for c in env.clients}
    floor = [env.ssh_all(fact_cmds)[0] for _ in range(floor_reps)]
    client_exec = [ours_exec[c] for c in env.clients]
    stage = {
        "hosts": hosts, "clients": len(env.clients), "parallel": hosts,
        "ours": [asdict(s) for s in ours], "one_op": [asdict(s) for s in base], "fact_floor": [asdict(s) for s in floor],
        "ours_median_s": median(ours), "one_op_median_s": median(base), "fact_floor_median_s": median(floor) if floor else None,
        "ours_per_host_ms": round(1000 * median(ours) / hosts, 1),
        "one_op_per_host_ms": round(1000 * median(base) / hosts, 1),
        "ours_controller_cpu_s": median(ours, "controller_cpu"), "one_op_controller_cpu_s": median(base, "controller_cpu"),
        "ours_controller_rss_mb": median(ours, "controller_rss_mb"),
        "one_op_controller_rss_mb": median(base, "controller_rss_mb"),
        "ours_machine_cpu_s": median(ours, "machine_cpu"), "one_op_machine_cpu_s": median(base, "machine_cpu"),
        "fact_floor_machine_cpu_s": median(floor, "machine_cpu") if floor else None,
        "ratio": round(median(ours) / median(base), 3),
        "exec_ours": {"client_min": min(client_exec), "client_max": max(client_exec), "server": ours_exec[SERVER]},
        "exec_one_op": {"client_max": max(base_exec[c] for c in env.clients), "server": base_exec[SERVER]},
    }
    log(f"  ours {stage['ours_median_s']:.2f}s one-op {stage['one_op_median_s']:.2f}s "
        f"floor {stage['fact_floor_median_s']}s -> {stage['ratio']:.2f}x; "
        f"controller {stage['ours_controller_cpu_s']:.1f} CPU-s, {stage['ours_controller_rss_mb']:.0f} MB")
    if hosts == 30:
        results["c"] = {
            "what": "no-op run of deploys/backup.py vs bench/noop_deploy.py, 30 hosts (29 clients + server)",
            **{k: stage[k] for k in ("hosts", "ours_median_s", "one_op_median_s", "fact_floor_median_s",
                                     "ratio", "exec_ours", "exec_one_op")},
            "target": f"<= {TARGETS['c']}", "met": stage["ratio"] <= TARGETS["c"],
            "exec_target": f"<= {TARGETS['c_exec']} per host",
            "exec_met_clients": stage["exec_ours"]["client_max"] <= TARGETS["c_exec"],
            "exec_met_server": stage["exec_ours"]["server"] <= TARGETS["c_exec"],
        }
    return stage


def forced_stage(args, env: Env) -> dict:
    """(e) at the fleet's current size: a forced backup of every client, ours against raw `borg create`
    (as (a), create only: the job without prune and checks, in an inventory of its own), both sides
    `parallel` hosts at a time (every client and its `borg serve` at once would not fit in memory at 300)."""
    hosts, clients = len(env.hosts()), len(env.clients)
    parallel = min(hosts, args.forced_parallel)
    full_job, full_inventory = env.job, env.inventory
    env.job = {k: v for k, v in full_job.items() if k not in ("prune", "checks")}
    try:
        env.write_inventory(f"inventory-forced-{hosts}.py")
        raw_cmds = {c: env.raw_create_command(c) for c in env.clients}
        last = [0.0]

        def ours():
            spaced(last)
            sample, proc = env.pyinfra("deploys/backup.py", "--data", "backup_force=true", parallel=parallel)
            created(proc, clients)
            return sample

        def raw():
            spaced(last)
            return env.ssh_all(raw_cmds, parallel=parallel)[0]

        reps = args.reps_forced if hosts <= 30 else 1
        # The warm-up: the clones' first create rebuilds their borg cache; a raw run does it for both sides.
        log(f"(e) forced backups on {hosts} hosts: {reps} reps each after a raw warm-up, --parallel {parallel}")
        raw()
        ours_e, raw_e = alternate(reps, ours, raw)
    finally:
        env.job, env.inventory = full_job, full_inventory
    stage = {
        "hosts": hosts, "clients": clients, "parallel": parallel,
        "ours": [asdict(s) for s in ours_e], "raw": [asdict(s) for s in raw_e],
        "ours_median_s": median(ours_e), "raw_median_s": median(raw_e),
        "ours_per_host_ms": round(1000 * median(ours_e) / clients, 1),
        "ours_controller_cpu_s": median(ours_e, "controller_cpu"), "raw_controller_cpu_s": median(raw_e, "controller_cpu"),
        "ours_controller_rss_mb": median(ours_e, "controller_rss_mb"),
        "ours_machine_cpu_s": median(ours_e, "machine_cpu"), "raw_machine_cpu_s": median(raw_e, "machine_cpu"),
        "ratio": round(median(ours_e) / median(raw_e), 3),
    }
    log(f"  ours {stage['ours_median_s']:.1f}s raw {stage['raw_median_s']:.1f}s -> {stage['ratio']:.2f}x; "
        f"controller {stage['ours_controller_cpu_s']:.1f} CPU-s, {stage['ours_controller_rss_mb']:.0f} MB")
    return stage


# ---------------------------------------------------------------- report


def table(results: dict) -> str:
    rows = ["| bench | ours | baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    if "a" in results:
        a = results["a"]
        rows.append(f"| (a) forced backup, unchanged data, {a['clients']} clients | {a['ours_median_s']:.2f} s | "
                    f"{a['raw_median_s']:.2f} s (raw borg create) | {a['ratio']:.2f}x | {a['target']}x | {_yes(a['met'])} |")
    if "pyinfra_floor" in results:
        rows.append(f"| pyinfra floor: the one-op deploy on the (a)/(b) fleet | {results['pyinfra_floor']['median_s']:.2f} s "
                    "| | | | |")
    for key in ("b", "b_large"):
        if key in results:
            b = results[key]
            rows.append(f"| (b) first backup, fresh repos, {b['clients']} clients, {b['bytes'] / 1e6:.0f} MB | "
                        f"{b['ours_bytes_per_s'] / 1e6:.1f} MB/s ({b['ours_median_s']:.2f} s) | "
                        f"{b['raw_bytes_per_s'] / 1e6:.1f} MB/s ({b['raw_median_s']:.2f} s) (raw borg create) | "
                        f"{b['ratio']:.0%} ({b['ratio_above_pyinfra_floor']:.0%} above the floor) | "
                        f">= {TARGETS['b']:.0%} | {_yes(b['met'])} |")
    if "c" in results:
        c = results["c"]
        rows.append(f"| (c) no-op run, {c['hosts']} hosts | {c['ours_median_s']:.2f} s | {c['one_op_median_s']:.2f} s "
                    f"(one-op deploy) | {c['ratio']:.2f}x | {c['target']}x | {_yes(c['met'])} |")
        e = c["exec_ours"]
        rows.append(f"| (c) remote commands per host, that no-op run | clients {_span(e['client_min'], e['client_max'])}, "
                    f"server {e['server']} | "
                    f"clients {c['exec_one_op']['client_max']}, server {c['exec_one_op']['server']} (one-op deploy) | | "
                    f"{c['exec_target']} | clients {_yes(c['exec_met_clients'])}, server {_yes(c['exec_met_server'])} |")
    out = "\n".join(rows)
    stages = results.get("d") or []
    if stages:
        out += ("\n\n(d) no-op runs as the fleet grows (hosts = clients + 1 server; --parallel = hosts on both sides)\n\n"
                "| hosts | ours no-op | per host | one-op deploy | per host | ratio | fact floor | "
                "controller CPU ours / one-op | controller memory ours / one-op | machine CPU ours / one-op |"
                "\n|---|---|---|---|---|---|---|---|---|---|")
        for s in stages:
            floor = "-" if s["fact_floor_median_s"] is None else f"{s['fact_floor_median_s']:.2f} s"
            out += (f"\n| {s['hosts']} | {s['ours_median_s']:.2f} s | {s['ours_per_host_ms']:.0f} ms | "
                    f"{s['one_op_median_s']:.2f} s | {s['one_op_per_host_ms']:.0f} ms | {s['ratio']:.2f}x | {floor} | "
                    f"{s['ours_controller_cpu_s']:.1f} / {s['one_op_controller_cpu_s']:.1f} s | "
                    f"{_mb(s.get('ours_controller_rss_mb'))} / {_mb(s.get('one_op_controller_rss_mb'))} | "
                    f"{s['ours_machine_cpu_s']:.1f} / {s['one_op_machine_cpu_s']:.1f} s |")
        for prev, s in zip(stages, stages[1:]):
            added = s["hosts"] - prev["hosts"]
            out += (f"\n\n{prev['hosts']} -> {s['hosts']} hosts: each added host costs "
                    f"{1000 * (s['ours_median_s'] - prev['ours_median_s']) / added:.0f} ms (ours), "
                    f"{1000 * (s['one_op_median_s'] - prev['one_op_median_s']) / added:.0f} ms (one-op deploy)")
    forced = results.get("e") or []
    if forced:
        out += ("\n\n(e) forced backup of every client as the fleet grows (create-only job; both sides "
                "--forced-parallel hosts at a time)\n\n"
                "| hosts | parallel | ours | per client | raw borg create | ratio | controller CPU ours / raw | "
                "controller memory | machine CPU ours / raw |\n|---|---|---|---|---|---|---|---|---|")
        for s in forced:
            out += (f"\n| {s['hosts']} | {s['parallel']} | {s['ours_median_s']:.1f} s | {s['ours_per_host_ms']:.0f} ms | "
                    f"{s['raw_median_s']:.1f} s | {s['ratio']:.2f}x | "
                    f"{s['ours_controller_cpu_s']:.1f} / {s['raw_controller_cpu_s']:.1f} s | "
                    f"{_mb(s['ours_controller_rss_mb'])} | "
                    f"{s['ours_machine_cpu_s']:.0f} / {s['raw_machine_cpu_s']:.0f} s |")
    return out


def _mb(value) -> str:
    return "-" if value is None else f"{value:.0f} MB"


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _meta(args) -> dict:
    commit = HEAD_COMMIT or subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True).stdout.strip()
    borg = subprocess.run(["borg", "--version"], capture_output=True, text=True).stdout.strip()
    import pyinfra
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT,
                           capture_output=True, text=True).stdout.split("\n")
    return {
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "code": "a copy of HEAD (--head)" if HEAD_COMMIT else "the working tree",
        "uncommitted_project_changes": [] if HEAD_COMMIT else [line[3:] for line in dirty if line and not line[3:].startswith("bench/")],
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit, "pyinfra": pyinfra.__version__, "borg": borg, "python": platform.python_version(),
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
        "settings": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()},
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=5, help="clients for (a)/(b) (plus one repo server); default 5")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, less data, (c)/(d) at 30 hosts only (~3 min)")
    p.add_argument("--sizes", default=None, help="fleet sizes for (c)/(d), hosts incl. the server (10,30,100; --quick 30)")
    p.add_argument("--only", default="a,b,c,d", help="subset of a,b,c,d,e (a and b go together, so do c, d and e)")
    p.add_argument("--forced-parallel", type=int, default=50, help="(e): hosts at a time on both sides (default 50)")
    p.add_argument("--files", type=int, default=None, help="files per client for (a)/(b) (3000; --quick 1000)")
    p.add_argument("--mb", type=int, default=None, help="MB per client for (a)/(b) (30; --quick 10)")
    p.add_argument("--mb-large", type=int, default=None, help="MB per client for the larger (b) (300; 0: not run; --quick 0)")
    p.add_argument("--output", default=str(RESULTS))
    p.add_argument("--head", action="store_true", help="benchmark a copy of the committed HEAD, not the working tree")
    p.add_argument("--escrow", action="store_true", help="(c)/(d): every client with borgbackup.escrow.recipients")
    args = p.parse_args(argv)
    args.files = args.files or (1000 if args.quick else 3000)
    args.mb = args.mb or (10 if args.quick else 30)
    args.mb_large = (0 if args.quick else 300) if args.mb_large is None else args.mb_large
    args.sizes = [int(s) for s in (args.sizes or ("30" if args.quick else "10,30,100")).split(",")]
    if args.sizes != sorted(args.sizes) or args.sizes[0] < 2:
        p.error("--sizes: increasing, each at least 2")
    # Repetitions (medians reported). The warm-ups: (a) one run of each; (b) the enrollment run, which
    # also ran borg on every host; (c)/(d) the verification run of ours, one run of the baseline.
    args.reps_a = 3 if args.quick else 5
    args.reps_b = 1 if args.quick else 3
    args.reps_b_large = 3
    args.warm_b = 0
    args.reps_cd = 3 if args.quick else 5  # up to 30 hosts (3 at 10 hosts: (c) is at 30)
    args.reps_cd_big = 2 if args.quick else 3  # above 30 hosts (a 100-host no-op run takes about a minute here)
    # The fact floor (every client's fact command over OpenSSH at once, no pyinfra) costs as much as
    # our no-op run: measured where it explains (c), not at 100 hosts.
    args.reps_floor = {30: 1} if args.quick else {10: 1, 30: 2}
    args.reps_forced = 1 if args.quick else 3  # (e) up to 30 hosts; above, 1 (a 300-host forced run takes minutes)
    args.only_set = set(args.only.split(","))
    if not args.only_set <= set("abcde"):
        p.error("--only: a subset of a,b,c,d,e")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    only = args.only_set
    install_teardown_handlers()
    cleanup_leftovers()  # fleets of dead bench/test runs only; live ones are left alone
    results: dict = {"meta": _meta(args)}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pbk-bench-") as tmp:
        work = Path(tmp)
        op_key = work / "operator_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(op_key)], check=True)
        try:
            if only & {"a", "b"}:
                bench_ab(args, work, op_key, results)
            if only & {"c", "d", "e"}:
                bench_cd(args, work, op_key, results)
        finally:
            results["meta"]["loadavg_end"] = os.getloadavg()
            results["meta"]["duration_s"] = round(time.monotonic() - t0, 1)
            Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\n{results['meta']['command']}: {results['meta']['duration_s']:.0f} s; results in {args.output}")
    return 0
