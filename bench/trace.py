"""Where the time of a pyinfra run goes: pyinfra's CLI run in-process with a timeline recorder.

    .venv/bin/python -m bench.trace [--json OUT] -- -y INVENTORY deploys/backup.py [pyinfra args...]

Records the CLI's stages (setup / connect / prepare / execute), every operation's wall time, each
host's connect and every remote command (start, end, first words). gevent runs pyinfra's hosts as
greenlets, so a sampling profiler shows mostly the hub waiting; this timeline says which remote
command or which stage the wall time is spent in. Prints a summary to stderr (pyinfra's own output
goes where it always goes).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import defaultdict

T0 = time.perf_counter()
EVENTS: list[dict] = []


def _now() -> float:
    return round(time.perf_counter() - T0, 4)


def _label(command: str) -> str:
    text = str(command)
    if "::pbk:: list." in text:
        return "BorgClient fact (host records)"
    if "::pbk:: hostkeys" in text:
        return "BorgServer fact"
    m = re.search(r"\bborg (create|init|check|prune|compact|list|extract)\b", text)
    if m:
        return f"borg {m.group(1)}"
    return " ".join(text.split()[:4])[:60]


def install() -> None:
    import pyinfra_cli  # noqa: F401  (gevent monkey-patches here, before we touch anything)
    from pyinfra.api import operations
    from pyinfra.api.state import State
    from pyinfra.connectors.ssh import SSHConnector

    set_stage = State.set_stage

    def traced_set_stage(self, stage):
        EVENTS.append({"kind": "stage", "name": getattr(stage, "name", str(stage)), "t": _now()})
        return set_stage(self, stage)

    State.set_stage = traced_set_stage

    connect = SSHConnector.connect

    def traced_connect(self):
        start = _now()
        try:
            return connect(self)
        finally:
            EVENTS.append({"kind": "connect", "host": self.host.name, "start": start, "end": _now()})

    SSHConnector.connect = traced_connect

    run = SSHConnector.run_shell_command

    def traced_run(self, command, *args, **kwargs):
        start = _now()
        try:
            return run(self, command, *args, **kwargs)
        finally:
            EVENTS.append({"kind": "command", "host": self.host.name, "start": start, "end": _now(),
                           "label": _label(getattr(command, "get_raw_value", lambda: command)())})

    SSHConnector.run_shell_command = traced_run

    single = operations._run_single_op

    def traced_single(state, op_hash):
        start = _now()
        try:
            return single(state, op_hash)
        finally:
            name = state.get_op_meta(op_hash).names
            EVENTS.append({"kind": "op", "name": ", ".join(sorted(name)), "start": start, "end": _now()})

    operations._run_single_op = traced_single


def summary(total: float) -> str:
    out = [f"total (in-process, after interpreter start): {total:.2f}s"]
    stages = [e for e in EVENTS if e["kind"] == "stage"]
    for this, nxt in zip(stages, stages[1:] + [{"t": total}]):
        out.append(f"  stage {this['name']:<10} from {this['t']:6.2f}s  {nxt['t'] - this['t']:6.2f}s")
    connects = [e["end"] - e["start"] for e in EVENTS if e["kind"] == "connect"]
    if connects:
        out.append(f"  connects: {len(connects)}, median {sorted(connects)[len(connects) // 2]:.2f}s, max {max(connects):.2f}s")
    for e in (e for e in EVENTS if e["kind"] == "op"):
        out.append(f"  op {e['name'][:55]:<55} {e['start']:6.2f}s +{e['end'] - e['start']:5.2f}s")
    by_label = defaultdict(list)
    for e in (e for e in EVENTS if e["kind"] == "command"):
        by_label[e["label"]].append(e)
    for label, events in sorted(by_label.items(), key=lambda kv: -sum(e["end"] - e["start"] for e in kv[1])):
        d = sorted(e["end"] - e["start"] for e in events)
        out.append(f"  remote {label[:45]:<45} n={len(d):3d} median {d[len(d) // 2]:.2f}s max {d[-1]:.2f}s "
                   f"first start {min(e['start'] for e in events):.2f}s last end {max(e['end'] for e in events):.2f}s")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    out = None
    if argv[:1] == ["--json"]:
        out, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    install()
    from pyinfra_cli.main import main as pyinfra_main

    sys.argv = ["pyinfra", *argv]
    code = 0
    try:
        pyinfra_main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    total = _now()
    print("\n--- bench.trace\n" + summary(total), file=sys.stderr)
    if out:
        with open(out, "w") as f:
            json.dump({"total": total, "events": EVENTS}, f, indent=1)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
