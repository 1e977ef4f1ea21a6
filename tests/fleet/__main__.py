"""CLI for the namespace test fleet.

    python -m tests.fleet up 5 [--no-server]   # host01..host05 (group clients) + backup (group servers)
    python -m tests.fleet status
    python -m tests.fleet down [--all]
    python -m tests.fleet cleanup [--force]    # remove pbk- leftovers of dead fleets (all with --force)

`up` forks a small keeper process that owns the fleet (reaps its processes, tears it down on SIGTERM),
writes <state-root>/inventory.py (pyinfra) and prints its path. `down` stops the keeper's fleet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from .core import (
    BRIDGE,
    DEFAULT_STATE_ROOT,
    Fleet,
    FleetError,
    _proc_start_time,
    check_prerequisites,
    cleanup_leftovers,
    discover,
    teardown_all,
)

SERVER_NAME = "backup"


class _Stop(Exception):
    pass


def _cli_file(root: Path) -> Path:
    return root / "cli.json"


def _read_cli(root: Path) -> dict | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(_cli_file(root).read_text())
    return None


def _keeper_alive(info: dict | None) -> bool:
    return bool(info) and _proc_start_time(info["keeper_pid"]) == info.get("keeper_start")


def client_names(count: int) -> list[str]:
    width = max(2, len(str(count)))
    return [f"host{i:0{width}d}" for i in range(1, count + 1)]


def _keeper(root: Path, names: list[str], server: bool, w: int) -> None:
    """Runs in the forked keeper: bring the fleet up, report on fd w, then wait for SIGTERM/SIGINT."""
    os.setsid()
    log = os.open(root / "keeper.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise _Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    fleet = Fleet(root)
    try:
        t0 = time.monotonic()
        fleet.up(names, group="clients")
        if server:
            fleet.add(SERVER_NAME, group="servers")
        elapsed = time.monotonic() - t0
        inventory = fleet.write_inventory(root / "inventory.py")
        info = {
            "keeper_pid": os.getpid(),
            "keeper_start": _proc_start_time(os.getpid()),
            "slot": fleet.slot,
            "state_dir": str(fleet.state_dir),
            "inventory": str(inventory),
            "ssh_config": str(fleet.ssh_config_path),
            "hosts": [{"name": h.name, "address": h.address, "pid": h.pid} for h in fleet.hosts],
            "up_seconds": round(elapsed, 3),
        }
        _cli_file(root).write_text(json.dumps(info, indent=1) + "\n")
        os.write(w, json.dumps({"ok": info}).encode())
        os.close(w)
        while True:
            time.sleep(3600)
    except _Stop:
        pass
    except BaseException:
        with contextlib.suppress(OSError):
            os.write(w, json.dumps({"error": traceback.format_exc()}).encode())
            os.close(w)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(BaseException):
            fleet.down()
        teardown_all()
        os._exit(0)


def cmd_up(args) -> int:
    check_prerequisites()
    root = Path(args.state_root)
    root.mkdir(parents=True, exist_ok=True)
    info = _read_cli(root)
    if _keeper_alive(info):
        print(f"a CLI fleet is already up (slot {info['slot']}): {info['inventory']}; run `down` first", file=sys.stderr)
        return 1
    names = client_names(args.count)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _keeper(root, names, not args.no_server, w)
    os.close(w)

    def interrupted(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    try:
        result = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        result = {}
    if "ok" not in result:
        print(result.get("error", f"fleet keeper died; see {root / 'keeper.log'}"), file=sys.stderr)
        return 1
    info = result["ok"]
    print(f"fleet slot {info['slot']}: {len(info['hosts'])} hosts up in {info['up_seconds']:.3f}s "
          f"(keeper pid {info['keeper_pid']}); ssh -F {info['ssh_config']} HOST", file=sys.stderr)
    print(info["inventory"])
    return 0


def _wait_gone(pid: int, start: str | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _proc_start_time(pid) != start:
            return True
        time.sleep(0.01)
    return False


def cmd_down(args) -> int:
    check_prerequisites()
    root = Path(args.state_root)
    info = _read_cli(root)
    if info and _keeper_alive(info):
        os.kill(info["keeper_pid"], signal.SIGTERM)
        if not _wait_gone(info["keeper_pid"], info["keeper_start"], 60):
            print(f"keeper {info['keeper_pid']} did not stop; cleaning up anyway", file=sys.stderr)
    slots = None if (args.all or not info) else [info["slot"]]
    if info and not args.all:
        cleaned = cleanup_leftovers(force=True, slots=slots, state_root=root)
    else:
        cleaned = cleanup_leftovers(force=args.all, state_root=root)
    for name in ("cli.json", "inventory.py", "keeper.log"):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()
    if info:
        print(f"fleet slot {info['slot']} down", file=sys.stderr)
    if cleaned:
        print(f"cleaned leftovers of slots {cleaned}", file=sys.stderr)
    return 0


def cmd_status(args) -> int:
    root = Path(args.state_root)
    info = _read_cli(root)
    found = discover()
    if args.json:
        print(json.dumps({"cli": info, "cli_alive": _keeper_alive(info), **found}, indent=1, default=str))
        return 0
    if info:
        state = "up" if _keeper_alive(info) else "DEAD keeper (run `down`)"
        print(f"CLI fleet: slot {info['slot']}, keeper {info['keeper_pid']} {state}, inventory {info['inventory']}")
        for h in info["hosts"]:
            alive = "up" if _proc_start_time(h["pid"]) else "down"
            print(f"  {h['name']:<10} {h['address']:<14} pid {h['pid']:<8} {alive}")
    else:
        print("CLI fleet: none")
    print(f"bridge {BRIDGE}: {'present' if found['bridge'] else 'absent'}")
    for slot, entry in sorted(found["fleets"].items(), key=lambda kv: kv[0] or 0):
        owner = entry["owner"] or {}
        print(f"slot {slot}: owner pid {owner.get('pid')} {'alive' if entry['alive'] else 'DEAD (leftover)'}, "
              f"{len(entry['netns'])} netns, {len(entry['links'])} veths, mounts {entry['mounts']}")
    return 0


def cmd_cleanup(args) -> int:
    cleaned = cleanup_leftovers(force=args.force, state_root=Path(args.state_root))
    print(f"cleaned slots: {cleaned}" if cleaned else "nothing to clean", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-root", default=str(DEFAULT_STATE_ROOT), help="default: %(default)s")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-root", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="start COUNT clients (+ the backup server)")
    up.add_argument("count", type=int)
    up.add_argument("--no-server", action="store_true", help=f"no '{SERVER_NAME}' host")
    down = sub.add_parser("down", parents=[common], help="stop the CLI fleet (and clean leftovers of dead fleets)")
    down.add_argument("--all", action="store_true", help="also stop live fleets of other processes")
    status = sub.add_parser("status", parents=[common])
    status.add_argument("--json", action="store_true")
    cleanup = sub.add_parser("cleanup", parents=[common], help="remove pbk- leftovers of dead fleets")
    cleanup.add_argument("--force", action="store_true", help="also live fleets")
    args = parser.parse_args(argv)
    if args.command == "up" and not 1 <= args.count <= 253:
        parser.error("count must be 1..253")
    try:
        return {"up": cmd_up, "down": cmd_down, "status": cmd_status, "cleanup": cmd_cleanup}[args.command](args)
    except FleetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
