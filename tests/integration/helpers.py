"""Running pyinfra and the operator's borg against the test fleet, as a user would."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pyinfra_backup.borg import OPERATOR_BASE_DIR_VAR

PROJECT = Path(__file__).resolve().parents[2]

# A client's data to back up (contents, owners, modes, a link) and its passphrase file ($PASS).
DATA_SETUP = r"""
set -e
rm -rf /srv/data && mkdir -p /srv/data/app/empty /srv/data/owned
echo "hello from $(hostname)" > /srv/data/hello.txt
head -c 300000 /dev/urandom > /srv/data/app/blob.bin
printf 'secret-ish\n' > /srv/data/app/private && chmod 0600 /srv/data/app/private
chown 1234:2345 /srv/data/owned && chmod 0750 /srv/data/owned
echo owned > /srv/data/owned/file && chown 1234:2345 /srv/data/owned/file && chmod 0640 /srv/data/owned/file
ln -s hello.txt /srv/data/link
umask 077 && printf '%s' "$PASS" > /root/borg-pass
"""
# A tree's paths, owners, modes, kinds, link targets and contents, to compare two trees.
TREE = "cd {0} && find . -printf '%p %U %G %m %y %l\\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum"


def pyinfra(inventory, *args: str, env: dict | None = None, yes: bool = True, timeout: int = 300, cwd=PROJECT):
    """`pyinfra [-y] INVENTORY ARGS...` from the project root (or `cwd`); stdout and stderr together in `.stdout`.
    A BORG_BASE_DIR in `env` (the tests' operator borg directory) is also the pyinfra run's
    PYINFRA_BACKUP_BORG_BASE_DIR: operator-side borg takes no BORG_* from its caller."""
    argv = [str(PROJECT / ".venv/bin/pyinfra"), *(["-y"] if yes else []), str(inventory), *args]
    env = {**os.environ, **(env or {})}
    if "BORG_BASE_DIR" in env:  # each test's operator is a machine of its own: its archive ledger too
        env.setdefault("PYINFRA_BACKUP_STATE", env["BORG_BASE_DIR"] + "-state")
        env.setdefault(OPERATOR_BASE_DIR_VAR, env["BORG_BASE_DIR"])
    return subprocess.run(
        argv, cwd=cwd, env=env, timeout=timeout,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def operator_borg(setup: dict, client: str, *args: str, check: bool = True):
    """borg on the operator's machine with the operator key, `{repo}` standing for the client's repo."""
    fleet = setup["fleet"]
    repo = f"ssh://borg@{fleet.host('backup').address}/var/lib/borgbackup/{client}"
    rsh = (f"ssh -i {setup['op_key']} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes "
           f"-o UserKnownHostsFile={fleet.known_hosts_path}")
    env = {**os.environ, **setup["env"], "BORG_RSH": rsh, "BORG_PASSPHRASE": setup["pass"][client], "TZ": "UTC"}
    argv = ["borg", *[arg.replace("{repo}", repo) for arg in args]]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=check)


def borg_job(server: str = "backup", **extra) -> dict:
    """The fleet tests' usual job: /srv/data to the client's repo on `server`, passphrase in /root/borg-pass."""
    return {
        "paths": ["/srv/data"],
        "repo": f"borg@{server}:.",
        "encryption": {"mode": "repokey-blake2", "passCommand": "cat /root/borg-pass"},
        "startAt": "daily",
        "checks": {"frequency": "30d"},
        **extra,
    }


def tree(fleet, name: str, path: str) -> str:
    """`TREE` of `path` inside a fleet host: equal trees print the same text."""
    return fleet.run(name, TREE.format(path)).stdout


def in_host(fleet, name: str, cmd: str) -> list[str]:
    """argv that runs `cmd` inside a fleet host, for a background process (fleet.run waits)."""
    pid = str(fleet.host(name).pid)
    return ["nsenter", "-t", pid, "--net", "--mount", "--uts", "--pid", "--root", "--wd", "--", "/bin/sh", "-c", cmd]


class PingServer:
    """A healthchecks.io stand-in on 127.0.0.1: records (path, body) of every request."""

    def __init__(self):
        import http.server
        import threading

        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                server.requests.append((self.path, self.rfile.read(length).decode()))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()


class ArgvSampler:
    """Records every distinct command line seen in a fleet host while it runs: a loop inside the host
    reads /proc/*/cmdline until told to stop (no ssh, no process per sample: short-lived processes are
    caught). `with ArgvSampler(fleet, "backup") as sampler: ...`, then `sampler.seen`."""

    SCRIPT = r"""
import glob, os, sys
out, stop, seen = sys.argv[1], sys.argv[1] + ".stop", set()
while not os.path.exists(stop):
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                seen.add(f.read().replace(b"\0", b" ").decode(errors="replace").strip())
        except OSError:
            pass
with open(out, "w") as f:
    f.write("\n".join(sorted(seen)))
"""

    def __init__(self, fleet, host: str, path: str = "/tmp/argv-sampler.log"):
        self.fleet, self.host, self.path = fleet, host, path
        self.seen: list[str] = []

    def __enter__(self) -> "ArgvSampler":
        import shlex

        self.fleet.run(self.host, f"rm -f {self.path} {self.path}.stop")
        self._proc = subprocess.Popen(in_host(self.fleet, self.host, f"exec python3 -c {shlex.quote(self.SCRIPT)} {self.path}"))
        return self

    def __exit__(self, *exc) -> None:
        self.fleet.run(self.host, f"touch {self.path}.stop")
        self._proc.wait(timeout=30)
        self.seen = self.fleet.run(self.host, f"cat {self.path}").stdout.splitlines()
