"""Small pyinfra deploy used by tests/fleet/test_fleet.py: one fact, one file upload per host.

Writes /root/pbk-probe.txt = "<inventory name> <Hostname fact> <fleet groups> <probe_token host data>".
"""

import io

from pyinfra import host
from pyinfra.facts.server import Hostname
from pyinfra.operations import files

hostname = host.get_fact(Hostname)
groups = ",".join(sorted(g for g in host.groups if g in ("clients", "servers"))) or "-"
token = host.data.get("probe_token") or "-"

files.put(
    name="Write the fleet probe file",
    src=io.StringIO(f"{host.name} {hostname} {groups} {token}\n"),
    dest="/root/pbk-probe.txt",
    mode="600",
)
