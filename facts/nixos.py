"""Facts about a NixOS host's system generations, each read in ONE remote command.

    pyinfra INVENTORY fact facts.nixos.NixosGenerations

A host that is not NixOS and has no /nix/var/nix/profiles/system gives None (not an error).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api import FactBase

from pyinfra_backup.jsonable import JsonFact
from pyinfra_backup.nixos import PROFILE, SystemProfile, eval_argv, generation_sections, parse_generations
from pyinfra_backup.shell import parse_sections, sectioned_script, sh_join


class NixosGenerations(FactBase):
    """The system profile: each generation (number, date, store path, NixOS version, kernel,
    configurationRevision when the config sets it, specialisations, current/running/booted), which one
    the profile points to, and the store paths of /run/current-system and /run/booted-system.
    Example: `host.get_fact(NixosGenerations)` -> SystemProfile | None."""

    def command(self, profile: str = PROFILE) -> str:
        self.profile = profile
        return sectioned_script(generation_sections(profile))

    def process(self, output) -> SystemProfile | None:
        return parse_generations(parse_sections(output), self.profile)


@dataclass(frozen=True)
class Toplevel(JsonFact):
    path: str | None  # the store path the system would be built at
    error: str | None = None


class NixosToplevel(FactBase):
    """Where `<flake>#nixosConfigurations.<attr>` would be built, evaluated on the host without
    building (`nix eval --raw ...toplevel.outPath`). Example:
    `host.get_fact(NixosToplevel, flake="/etc/nixos", attr="web-1")` -> Toplevel(path="/nix/store/...")."""

    def command(self, flake: str, attr: str) -> str:
        # `--raw` prints no newline: add one, or the next section marker would share the line
        return sectioned_script({"eval": f"{sh_join(eval_argv(flake, attr))} && echo"})

    def process(self, output) -> Toplevel:
        section = parse_sections(output)["eval"]
        path = section.text.strip()
        if section.ok and path.startswith("/"):
            return Toplevel(path)
        return Toplevel(None, section.error)
