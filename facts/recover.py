"""Facts a recovery run compares against (deploys/recover.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api import FactBase

from pyinfra_backup.jsonable import JsonFact
from pyinfra_backup.shell import parse_sections, sectioned_script, sh_join


@dataclass(frozen=True)
class Checkout(JsonFact):
    head: str | None  # the commit checked out, None when `path` is not a git checkout
    exists: bool


class ConfigCheckout(FactBase):
    """Which commit a checkout is at. Example: `host.get_fact(ConfigCheckout, path="/etc/nixos")`."""

    def command(self, path: str) -> str:
        quoted = sh_join([path])
        return sectioned_script({"exists": f"test -e {quoted}", "head": f"git -C {quoted} rev-parse --verify -q HEAD"})

    def process(self, output) -> Checkout:
        sections = parse_sections(output)
        head = sections["head"]
        return Checkout(head=head.text.strip() if head.ok and head.text.strip() else None, exists=sections["exists"].ok)
