"""Fleet recovery: each host brought back in the order that works, every step idempotent and timed.

    pyinfra -y INVENTORY deploys/recover.py [--limit HOST]

(1) identity from the state archive (machine-id, SSH host keys, /var/lib/nixos: before anything
else, so that agenix can decrypt and uids match); (1b) the escrowed key of each keyfile-mode job
on a host that lost it (tasks/escrow.py); (2) the config repo at `recover_ref`; (3) on
NixOS, rebuild from it or roll back to `recover_generation`; (4) job data from `recover_archive`;
(5) its PostgreSQL databases and container volumes by name;
(6) verification: the identity files match the state archive, `recover_checks` pass; then a summary per host: what came from which archive, how long each step took (the RTO).
Restores are relayed by the operator's machine (tasks/relay.py): a freshly installed host without
its backup key or its secrets recovers too (give its passphrase with `recover_passCommand`).
"""

from pyinfra_backup.validate import require_valid_inventory
from tasks import recover

require_valid_inventory()

recover.identity(name="(1) Host identity from the state archive")
recover.keys(name="(1b) Keyfile-mode keys from the escrow")
recover.config(name="(2) Config repo at recover_ref")
recover.system(name="(3) NixOS: rebuild or roll back")
recover.job_data(name="(4) Job data")
recover.databases(name="(5) Databases and container volumes")
recover.verify(name="(6) Verify: identity files = state archive, recover_checks")
recover.summary(name="Recovery summary")
