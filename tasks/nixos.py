"""NixOS system generations: roll back to a generation, rebuild from a flake, idempotently.

    pyinfra -y INVENTORY tasks.nixos.rollback generation=41 --limit web-1
    pyinfra -y INVENTORY tasks.nixos.rebuild flake=/etc/nixos [host_attr=web-1] [action=boot]

Both read the host's generations first (facts/nixos.py) and change nothing when the host already
is where it was asked to be.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import FunctionCommand

from facts.nixos import NixosGenerations, NixosToplevel
from pyinfra_backup.nixos import ACTIONS, REBUILT, SystemProfile, rebuild_script, rollback_commands, toplevel
from tasks.common import HostError, host_operation, run_in_operation


def _system() -> SystemProfile:
    system = host.get_fact(NixosGenerations)
    if system is None:
        raise HostError(f"{host.name}: not a NixOS host: no /etc/NIXOS and no /nix/var/nix/profiles/system")
    return system


def _generation_number(generation) -> int:
    try:
        number = int(generation)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(generation).strip() != str(number):
        raise HostError(f"{host.name}: generation: expected a NixOS generation number (an integer >= 1), got {generation!r}")
    return number


@host_operation
def rollback(generation):
    """Make system generation N the current one and activate it (`nix-env -p
    /nix/var/nix/profiles/system --switch-generation N`, then `switch-to-configuration switch`).
    Nothing happens when N is already current and running. Example: `rollback(generation=41)`."""
    number = _generation_number(generation)
    system = _system()
    target = system.generation(number)
    if target is None:
        known = ", ".join(str(g.number) for g in system.generations) or "none"
        raise HostError(f"{host.name}: generation: no system generation {number} (generations: {known})")
    if not target.exists:
        raise HostError(f"{host.name}: generation {number}: its store path {target.path} is gone (garbage-collected)")
    if not target.switchable:
        raise HostError(f"{host.name}: generation {number}: {target.path} has no bin/switch-to-configuration")
    if target.current and target.running:
        host.noop(f"generation {number} is current and running ({target.path})")
        return
    yield from rollback_commands(number, already_current=target.current)


def _run_rebuild(state, host, script: str) -> bool:  # noqa: F811 (pyinfra passes `host`)
    """Run the build-compare-switch script and say what it did."""
    ok, output = run_in_operation(state, host, script)
    lines = [line.strip() for line in output.stdout_lines if line.strip()]
    if not ok:
        errors = [line.strip() for line in output.stderr_lines if line.strip()]
        host.log_styled(f"rebuild failed: {'; '.join(errors[-3:]) or 'no output'}", fg="red", log_func=logger.error)
        return False
    host.log_styled(lines[-1] if lines else "rebuild: no report", fg="green" if lines and lines[-1].startswith(REBUILT) else None,
                    log_func=logger.info)
    return True


@host_operation
def rebuild(flake: str, host_attr: str | None = None, action: str = "switch"):
    """Build `<flake>#nixosConfigurations.<host_attr>` (default: the host's hostname) on the host
    and switch to it (`action="boot"`: make it the boot default only) when it differs from the
    profile's generation (and, for switch, from /run/current-system). The comparison is made first
    from an evaluation (no change: "No changes"), then again on the host after the build.
    Example: `rebuild(flake="/etc/nixos")`."""
    if action not in ACTIONS:
        raise HostError(f"{host.name}: action: expected one of {', '.join(ACTIONS)}, got {action!r}")
    system = _system()
    attr = host_attr or system.hostname
    try:
        installable = toplevel(flake, attr)
    except ValueError as error:
        raise HostError(f"{host.name}: {error}") from None
    built = host.get_fact(NixosToplevel, flake=flake, attr=attr)
    if built.path is None:
        raise HostError(f"{host.name}: cannot evaluate {installable}: {built.error}")
    current = system.current_generation
    in_profile = current is not None and current.path == built.path
    if in_profile and (action == "boot" or system.running == built.path):
        where = "the boot default" if action == "boot" else "current and running"
        host.noop(f"{built.path} is already {where} (generation {current.number})")
        return
    yield FunctionCommand(_run_rebuild, (rebuild_script(flake, attr, action),), {})
