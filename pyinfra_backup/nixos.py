"""NixOS system generations: the one-round-trip read, its parsing, rollback and rebuild commands.

A NixOS host keeps its system generations as links in /nix/var/nix/profiles:
`system -> system-N-link -> /nix/store/<hash>-nixos-system-<host>-<version>`. Inside a generation
(nixpkgs nixos/modules/system/activation/top-level.nix): `nixos-version` (the label), `bin/switch-to-configuration`,
`kernel-modules/lib/modules/<kernel version>`, `specialisation/<name>`; `system.configurationRevision`
is not a file there but is compiled into the generation's `sw/bin/nixos-version --json`
(nixos/modules/installer/tools/tools.nix), which is where `nixos-rebuild list-generations` reads it.
A generation's date is the mtime of its link. `/run/current-system` is what runs, `/run/booted-system` what booted.

>>> rollback_commands(41, already_current=False)[0]
'nix-env -p /nix/var/nix/profiles/system --switch-generation 41'
>>> toplevel("/etc/nixos", "web-1")
'/etc/nixos#nixosConfigurations.web-1.config.system.build.toplevel'
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from collections.abc import Mapping

from pyinfra_backup.jsonable import JsonFact
from pyinfra_backup.shell import Section, sh_join

PROFILE = "/nix/var/nix/profiles/system"
RUNNING = "/run/current-system"
BOOTED = "/run/booted-system"
NIX_FLAGS = ("--extra-experimental-features", "nix-command flakes")
ACTIONS = ("switch", "boot")

# One line per fact of a generation: `gen N MTIME STORE_PATH` starts one, the others describe it.
_GENERATIONS = r"""
for l in {profile}-*-link; do
  [ -L "$l" ] || continue
  n=${{l##*/}}; n=${{n#{name}-}}; n=${{n%-link}}
  case "$n" in ''|*[!0-9]*) continue ;; esac
  t=$(readlink -f "$l")
  printf 'gen %s %s %s\n' "$n" "$(stat -c %Y "$l")" "$t"
  [ -e "$t" ] && echo exists
  [ -x "$l/bin/switch-to-configuration" ] && echo switchable
  [ -f "$l/nixos-version" ] && printf 'version %s\n' "$(head -c 256 "$l/nixos-version" | tr -d '\n')"
  for k in "$l"/kernel-modules/lib/modules/*; do [ -d "$k" ] && printf 'kernel %s\n' "${{k##*/}}"; done
  for s in "$l"/specialisation/*; do [ -e "$s" ] && printf 'specialisation %s\n' "${{s##*/}}"; done
  [ -x "$l/sw/bin/nixos-version" ] && printf 'json %s\n' "$("$l/sw/bin/nixos-version" --json 2>/dev/null | tr -d '\n')"
done
true
"""


def generation_sections(profile: str = PROFILE) -> dict[str, str]:
    """Section name -> command, for `sectioned_script`: everything `parse_generations` needs."""
    if not re.fullmatch(r"(/[A-Za-z0-9._-]+)+", profile):
        raise ValueError(f"profile: expected an absolute path of letters, digits and ._-, got {profile!r}")
    name = profile.rsplit("/", 1)[1]
    return {
        "nixos": "test -e /etc/NIXOS",
        "hostname": "uname -n",
        "profile": f"readlink {profile}",
        "running": f"test -L {RUNNING} && readlink -f {RUNNING}",
        "booted": f"test -L {BOOTED} && readlink -f {BOOTED}",
        "generations": _GENERATIONS.format(profile=profile, name=name).strip(),
    }


@dataclass(frozen=True)
class Generation:
    number: int
    date: datetime  # when the generation's link was made (UTC)
    path: str  # the store path the link points to
    exists: bool  # the store path is still there (not garbage-collected)
    switchable: bool  # it has bin/switch-to-configuration
    nixos_version: str | None = None
    kernel_version: str | None = None
    configuration_revision: str | None = None
    nixpkgs_revision: str | None = None
    specialisations: tuple[str, ...] = ()
    current: bool = False  # the profile points to it (what boots next, what `nixos-rebuild` last set)
    running: bool = False  # /run/current-system is its store path
    booted: bool = False  # /run/booted-system is its store path


@dataclass(frozen=True)
class SystemProfile(JsonFact):
    profile: str
    nixos: bool  # /etc/NIXOS exists
    hostname: str
    current: int | None  # generation number the profile points to
    running: str | None  # store path of /run/current-system
    booted: str | None  # store path of /run/booted-system
    generations: tuple[Generation, ...]

    def generation(self, number: int) -> Generation | None:
        return next((g for g in self.generations if g.number == number), None)

    @property
    def current_generation(self) -> Generation | None:
        return self.generation(self.current) if self.current is not None else None

    def to_json(self) -> dict:
        """For `pyinfra INVENTORY fact facts.nixos.NixosGenerations` (datetimes as ISO 8601)."""
        data = asdict(self)
        for generation in data["generations"]:
            generation["date"] = generation["date"].isoformat()
        return data


def _version_json(text: str) -> dict:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _parse_generation_lines(lines: list[str], running: str | None, booted: str | None,
                            current_link: str | None, name: str) -> list[Generation]:
    found: list[dict] = []
    for line in lines:
        key, _, value = line.partition(" ")
        if key == "gen":
            number, mtime, path = value.split(" ", 2)
            found.append({"number": int(number), "date": datetime.fromtimestamp(int(mtime), timezone.utc),
                          "path": path, "exists": False, "switchable": False, "specialisations": []})
        elif not found:
            continue
        elif key in ("exists", "switchable"):
            found[-1][key] = True
        elif key == "version":
            found[-1]["nixos_version"] = value or None
        elif key == "kernel":
            found[-1]["kernel_version"] = value
        elif key == "specialisation":
            found[-1]["specialisations"].append(value)
        elif key == "json":
            data = _version_json(value)
            found[-1]["configuration_revision"] = data.get("configurationRevision")
            found[-1]["nixpkgs_revision"] = data.get("nixpkgsRevision")
            found[-1].setdefault("nixos_version", data.get("nixosVersion"))
    return sorted((
        Generation(**{**entry, "specialisations": tuple(sorted(entry["specialisations"])),
                      "current": current_link == f"{name}-{entry['number']}-link",
                      "running": entry["path"] == running, "booted": entry["path"] == booted})
        for entry in found
    ), key=lambda g: g.number)


def parse_generations(sections: Mapping[str, Section], profile: str = PROFILE) -> SystemProfile | None:
    """The system profile from the sections of `generation_sections`; None on a host that is not
    NixOS and has no such profile."""
    name = profile.rsplit("/", 1)[1]

    def line(key: str) -> str | None:
        section = sections.get(key)
        return section.text.strip() or None if section is not None and section.ok else None

    nixos = sections["nixos"].ok
    link = line("profile")
    link = link.rsplit("/", 1)[-1] if link else None
    running, booted = line("running"), line("booted")
    generations = _parse_generation_lines(sections["generations"].stdout, running, booted, link, name)
    if not nixos and link is None and not generations:
        return None
    match = re.fullmatch(rf"{re.escape(name)}-(\d+)-link", link or "")
    return SystemProfile(profile=profile, nixos=nixos, hostname=line("hostname") or "", current=int(match[1]) if match else None,
                         running=running, booted=booted, generations=tuple(generations))


# --- changing the system ------------------------------------------------------------------------


def rollback_commands(number: int, already_current: bool, profile: str = PROFILE) -> list[str]:
    """Make generation `number` the profile's current one (unless it is already), then activate it
    and make it the boot default, as `nixos-rebuild switch --rollback` does."""
    commands = [] if already_current else [sh_join(["nix-env", "-p", profile, "--switch-generation", str(number)])]
    return commands + [sh_join([f"{profile}/bin/switch-to-configuration", "switch"])]


def attr_path(attr: str) -> str:
    """A nixosConfigurations attribute name as a flake fragment component (quoted when not plain)."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_'-]*", attr):
        return attr
    return '"' + attr.replace("\\", "\\\\").replace('"', '\\"') + '"'


def toplevel(flake: str, attr: str) -> str:
    """The installable of a host's system: `<flake>#nixosConfigurations.<attr>.config.system.build.toplevel`."""
    if not flake or "#" in flake:
        raise ValueError(f"flake: expected a flake reference without '#' (the host goes in host_attr), got {flake!r}")
    return f"{flake}#nixosConfigurations.{attr_path(attr)}.config.system.build.toplevel"


def eval_argv(flake: str, attr: str) -> list[str]:
    """The store path the system would be built at, evaluated without building."""
    return ["nix", *NIX_FLAGS, "eval", "--raw", toplevel(flake, attr) + ".outPath"]


REBUILT, UNCHANGED = "rebuild: switched to", "rebuild: already"


def rebuild_script(flake: str, attr: str, action: str = "switch", profile: str = PROFILE) -> str:
    """Build the system, then set the profile and run `switch-to-configuration ACTION` only when the
    built path differs from the profile (and, for `switch`, from /run/current-system). Decided on the
    host when it runs; the last line says which (`rebuild: switched to P` / `rebuild: already P`).
    The build's out-link (a GC root) lives until the profile holds the path."""
    if action not in ACTIONS:
        raise ValueError(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}")
    build = f'{sh_join(["nix", *NIX_FLAGS, "build", "--out-link"])} "$_d/result" {shlex.quote(toplevel(flake, attr))}'
    profile_q = shlex.quote(profile)
    compare_running = f' || [ "$(readlink -f {RUNNING})" != "$_out" ]' if action == "switch" else ""
    return "\n".join([
        "set -e",
        '_d=$(mktemp -d); trap \'rm -rf "$_d"\' EXIT',
        build,
        '_out=$(readlink -f "$_d/result")',
        f'_set=0; [ "$(readlink -f {profile_q})" = "$_out" ] || _set=1',
        f'if [ $_set = 1 ]{compare_running}; then',
        f'  if [ $_set = 1 ]; then nix-env -p {profile_q} --set "$_out"; fi',
        f'  "$_out/bin/switch-to-configuration" {action}',
        f'  echo "{REBUILT} $_out"',
        "else",
        f'  echo "{UNCHANGED} $_out"',
        "fi",
    ])
