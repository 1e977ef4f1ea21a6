"""agenix rekey as a pyinfra operation: only the secrets whose recipients changed, all or nothing.

    pyinfra -y @local tasks.agenix.rekey                 # or deploys/rekey.py with the host's `agenix` data
    pyinfra @local tasks.agenix.rekey --dry              # what would be rekeyed and why, nothing runs

Host data `agenix = {rules, identities, force}` (inventory/schema.json); the operation's arguments
override it, and so does `--data agenix.force=true` on the command line.

Where it runs: on the machine pyinfra runs on (the `@local` connector), where the secrets checkout,
the identities and any YubiKey are. secrets.nix is evaluated through a fact (one command), the
headers, the manifest and the decryption are read in pyinfra's own process, and the plaintext never
leaves its memory. Another host is refused (HostError): decrypting there would put the identities on
that host, and decrypting here would copy ciphertext back and forth for a checkout the operator
pushes with git anyway (deploys/config_repo.py).

Plugin identities and recipients (a YubiKey through age-plugin-yubikey: `AGE-PLUGIN-YUBIKEY-1...` lines in an
identity file, `age1yubikey1...` in secrets.nix) go through pyrage's plugin support, which runs
`age-plugin-<name>` from PATH as age does; the plugin's messages ("touch your YubiKey") go to stderr and a PIN
is asked on /dev/tty, so a YubiKey with a PIN policy needs a terminal. This path is tested with a toy plugin
(tests/integration/test_rekey_plugin.py), not with a YubiKey. Adding a backup YubiKey is one run: add its
recipient to every secret in secrets.nix, then `deploys/rekey.py`; a plugin stanza says nothing of whom it is
for, so the manifest (secrets/.rekey-manifest.json) records it: commit it with the secrets.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import FunctionCommand
from pyinfra.connectors.local import LocalConnector

from facts.agenix import AgenixRules
from pyinfra_backup.agenix import (
    DEFAULT_RULES, IdentityError, Plan, RekeyError, apply_plan, load_identities, plan_rekey, resolve_rules_path,
)
from tasks.common import HostError, host_operation


def _lines(message: str) -> str:
    """A multi-line message with its continuation lines indented under pyinfra's host prefix."""
    return message.replace("\n", "\n        ")


def _stop(message: str) -> HostError:
    """A HostError for this host; also shown while only planning (`--dry`), when nothing executes."""
    message = _lines(message)
    if not host.state.is_executing:
        host.log_styled(message, fg="red", log_func=logger.error)
    return HostError(message)


def _settings(rules, identities, force) -> tuple[str, list[str], bool]:
    data = host.data.get("agenix") or {}
    rules = rules if rules is not None else data.get("rules", DEFAULT_RULES)
    identities = identities if identities is not None else data.get("identities", [])
    if isinstance(identities, str):
        identities = [identities]
    if force is None:
        force = host.data.get("agenix.force")  # `--data agenix.force=true`
    if force is None:
        force = data.get("force", False)
    if not isinstance(force, bool):
        raise _stop(f"{host.name}: agenix.force: expected true or false, got {force!r}")
    return rules, list(identities), force


def _apply(state, host, plan: Plan, identity_files: list[str]) -> bool:
    """Execute time: load the identities (only now, only when something must be decrypted) and rekey."""
    try:
        identities = load_identities(identity_files) if plan.rekey else None
        result = apply_plan(plan, identities)
    except (IdentityError, RekeyError) as error:
        host.log_styled(_lines(f"agenix rekey: {error}"), fg="red", log_func=logger.error)
        return False
    for name, how in result.checks.items():
        host.log(f"rekeyed {name}: {how}")
    host.log(f"agenix rekey: {result.summary()}")
    return True


@host_operation
def rekey(rules: str | None = None, identities: list[str] | None = None, force: bool | None = None):
    """Rekey the agenix secrets whose recipients in secrets.nix changed (all of them with `force`).

    + rules: secrets.nix, relative to the working directory (the project root) or absolute
    + identities: files that can decrypt the secrets (age identities, SSH private keys, plugin identities);
      empty: ~/.ssh/id_ed25519 and ~/.ssh/id_rsa, as agenix
    + force: rekey every secret

    Example: `rekey()` on `@local`; `pyinfra @local tasks.agenix.rekey --dry` lists what would change.
    """
    rules, identity_files, force = _settings(rules, identities, force)
    if not issubclass(host.connector_cls, LocalConnector):
        raise _stop(f"{host.name}: agenix rekey runs on the machine with the secrets checkout and the identities: "
                        f"use the @local host (decryption never happens on a remote host)")
    path = resolve_rules_path(rules)
    current = host.get_fact(AgenixRules, path=str(path), shown=rules)
    if current.error:
        raise _stop(f"{host.name}: agenix.rules: {current.error}")
    try:
        plan = plan_rekey(current.rules, force=force)
    except RekeyError as error:
        raise _stop(f"{host.name}: agenix rekey: {error}")
    if not plan.changes:
        host.noop(plan.summary())
        return
    for line in plan.lines():
        host.log(line)
    host.log(plan.summary())
    yield FunctionCommand(_apply, (plan, identity_files), {})
