"""agenix rekey: re-encrypt the secrets whose recipients changed in secrets.nix, all or nothing.

    pyinfra -y @local deploys/rekey.py --data agenix='{"rules": "secrets/secrets.nix", "identities": ["~/.ssh/id_ed25519"]}'
    pyinfra -y INVENTORY deploys/rekey.py                    # the inventory's @local host with `agenix` data
    pyinfra -y INVENTORY deploys/rekey.py --data agenix.force=true   # rekey every secret
    pyinfra INVENTORY deploys/rekey.py --dry                 # what would be rekeyed and why; nothing runs

Runs on every host with `agenix` data, and on a bare `@local` (defaults: rules secrets/secrets.nix,
identities ~/.ssh/id_ed25519 and ~/.ssh/id_rsa, as agenix). Only `@local` hosts are supported: see
tasks/agenix.py. Adding a recipient (a backup YubiKey) to every secret in secrets.nix and running
this once rekeys every secret to it; a second run changes nothing.
"""

from pyinfra import host
from pyinfra.connectors.local import LocalConnector

from pyinfra_backup.validate import require_valid_inventory
from tasks import agenix

require_valid_inventory()

if host.data.get("agenix") is not None or issubclass(host.connector_cls, LocalConnector):
    agenix.rekey(name="agenix rekey")
