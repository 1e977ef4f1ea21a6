"""agenix rules (secrets.nix) evaluated on the host, in ONE command.

    pyinfra @local fact facts.agenix.AgenixRules path=$PWD/secrets/secrets.nix

`nix-instantiate --readonly-mode --eval --strict --json` (offline; nix's state and cache go to a
temp dir that is removed), then validated by `pyinfra_backup.agenix.parse_rules`: every secret's
`publicKeys` (a non-empty list of age or ssh-ed25519/ssh-rsa recipients) and `armor` (a bool),
file paths resolved relative to the rules file.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api import FactBase

from pyinfra_backup.agenix import Rules, RulesError, eval_command, rules_from_eval
from pyinfra_backup.jsonable import JsonFact
from pyinfra_backup.shell import parse_sections, sectioned_script, sh_join


@dataclass
class RulesState(JsonFact):
    rules: Rules | None  # None when the file is missing or invalid
    error: str | None  # one line per problem, naming the file and the attribute


class AgenixRules(FactBase):
    """secrets.nix as validated rules, or the reason it is not usable.
    Example: `host.get_fact(AgenixRules, path="/srv/config/secrets/secrets.nix", shown="secrets/secrets.nix")`
    -> RulesState(rules=Rules(...), error=None)."""

    def command(self, path: str, shown: str | None = None) -> str:
        self.path, self.shown = path, shown or path
        return sectioned_script({"exists": f"test -f {sh_join([path])}", "eval": eval_command(path)})

    def process(self, output) -> RulesState:
        sections = parse_sections(output)
        if not sections["exists"].ok:
            return RulesState(None, f"{self.shown}: no such file ({self.path})")
        evaluated = sections["eval"]
        try:
            rules = rules_from_eval(self.path, evaluated.rc, evaluated.text, "\n".join(evaluated.stderr), self.shown)
        except RulesError as error:
            return RulesState(None, str(error))
        return RulesState(rules, None)
