"""Benchmark: a forced create with a PostgreSQL dump vs without, and what pg_dump's own compression costs borg.

    .venv/bin/python -m bench.dumps [--rows 1000000] [--repeat 5]

Starts its own fleet (a repo server and one client running PostgreSQL 15 with a database of one table
of `--rows` rows: an id, two md5 strings and a timestamp, about 100 bytes a row), then times, alternately, `deploys/backup.py --data
backup_force=true` for the same job without and with `postgresqlDatabases` (medians), and on the client
alone: pg_dump's time, and the bytes borg adds for a second dump after 1 % of the rows changed, for
`pg_dump -Fc` (its default zlib compression) and `-Fc -Z0` (what the create step runs).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.fleet import Fleet, install_teardown_handlers
from tests.integration.helpers import pyinfra

PG = "/usr/lib/postgresql/15/bin"
SETUP = rf"""
set -e
install -d -o postgres -g postgres /run/postgresql /var/lib/pbk-pg
runuser -u postgres -- {PG}/initdb -D /var/lib/pbk-pg/data -A peer >/dev/null
runuser -u postgres -- {PG}/pg_ctl -D /var/lib/pbk-pg/data -o "-k /run/postgresql -c listen_addresses=''" -l /var/lib/pbk-pg/log -w start >/dev/null
runuser -u postgres -- createdb bench
runuser -u postgres -- psql -Xq bench -c "create table items as select g as id, md5(g::text) as a, md5((g * 7)::text) as b, now() - g * interval '1 second' as ts from generate_series(1, $ROWS) g; alter table items add primary key (id)"
mkdir -p /srv/small && for i in $(seq 20); do head -c 5000 /dev/urandom > /srv/small/f$i; done
umask 077 && printf '%s' "$PASS" > /root/borg-pass
"""
CHURN = "runuser -u postgres -- psql -Xq bench -c \"update items set a = md5(a) where id % 100 = 0\""
DEDUP = r"""
set -e
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_BASE_DIR=/tmp/bench-borg
rm -rf /tmp/r /tmp/d && mkdir -p /tmp/d && borg init -e none /tmp/r
s=$(date +%s%N); runuser -u postgres -- pg_dump -Fc {opts} bench > /tmp/d/dump; e=$(date +%s%N)
echo "dump_ms $(( (e - s) / 1000000 )) dump_bytes $(stat -c %s /tmp/d/dump)"
borg create --compression auto,zstd /tmp/r::a1 /tmp/d
{churn}
runuser -u postgres -- pg_dump -Fc {opts} bench > /tmp/d/dump
borg create --json --compression auto,zstd /tmp/r::a2 /tmp/d | python3 -c 'import json,sys; print("second_dedup_bytes", json.load(sys.stdin)["archive"]["stats"]["deduplicated_size"])'
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    install_teardown_handlers()
    fleet = Fleet()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dumps-"))
    try:
        fleet.up(["backup", "c1"])
        passphrase = secrets.token_hex(12)
        fleet.run("c1", f"export ROWS={args.rows} PASS={passphrase}\n" + SETUP, timeout=900)
        size = fleet.run("c1", "runuser -u postgres -- psql -XAtq -c \"select pg_database_size('bench')\"").stdout
        job = {"paths": ["/srv/small"], "repo": "borg@backup:.", "startAt": "daily",
               "encryption": {"mode": "repokey-blake2", "passCommand": "cat /root/borg-pass"}}
        with_dump = {**job, "postgresqlDatabases": [{"name": "bench"}]}
        inventories = {
            label: fleet.write_inventory(tmp / f"{label}.py", {"c1": {"borgbackup": {"jobs": {"system": data}}},
                                                               "backup": {"borgbackup": {"repos": {}}}})
            for label, data in (("without", job), ("with", with_dump))
        }
        env = {"BORG_BASE_DIR": str(tmp / "operator-borg")}
        for step in ("deploys/backup_server.py", "deploys/backup.py"):
            assert pyinfra(inventories["with"], step, env=env).returncode == 0
        times: dict[str, list[float]] = {"without": [], "with": []}
        for i in range(args.repeat):
            for label in ("without", "with") if i % 2 == 0 else ("with", "without"):
                start = time.monotonic()
                run = pyinfra(inventories[label], "deploys/backup.py", "--data", "backup_force=true", env=env)
                times[label].append(time.monotonic() - start)
                assert run.returncode == 0, run.stdout
        records = json.loads(fleet.run("c1", "cat /var/lib/pyinfra-backup/jobs/system/last-create.json").stdout)
        dedup = {}
        for label, opts in (("-Fc (zlib)", ""), ("-Fc -Z0", "-Z0")):
            out = fleet.run("c1", DEDUP.format(opts=opts, churn=CHURN), timeout=900).stdout.split()
            dedup[label] = dict(zip(out[::2], out[1::2]))
        print(f"database size: {int(size) / 1e6:.0f} MB ({args.rows} rows); load {open('/proc/loadavg').read().split()[:3]}")
        print("| forced create (pyinfra run, median of %d) | seconds |" % args.repeat)
        print("|---|---|")
        for label in ("without", "with"):
            print(f"| {label} the dump | {statistics.median(times[label]):.2f} ({', '.join(f'{t:.2f}' for t in times[label])}) |")
        print(f"last archive with the dump: borg's own duration {records['archive']['duration']:.2f} s, "
              f"original {records['archive']['stats']['original_size'] / 1e6:.1f} MB")
        print("| pg_dump | dump s | dump MB | borg adds for a 2nd dump after 1 % of rows changed |")
        print("|---|---|---|---|")
        for label, values in dedup.items():
            print(f"| {label} | {int(values['dump_ms']) / 1000:.2f} | {int(values['dump_bytes']) / 1e6:.1f} | "
                  f"{int(values['second_dedup_bytes']) / 1e6:.2f} MB |")
    finally:
        fleet.run("c1", f"runuser -u postgres -- {PG}/pg_ctl -D /var/lib/pbk-pg/data -w -m fast stop", check=False) \
            if "c1" in fleet else None
        fleet.down()
        subprocess.run(["rm", "-rf", str(tmp)])


if __name__ == "__main__":
    main()
