"""NixOS generations on a fleet host without NixOS: Debian's nix builds a flake whose
`nixosConfigurations.nixos01` toplevel is a small derivation shaped like a NixOS system (nixos-version,
kernel-modules, specialisation, sw/bin/nixos-version --json, bin/switch-to-configuration that points
/run/current-system at itself and logs each activation). `tasks.nixos.rebuild` builds it and makes real
generations with nix-env; `tasks.nixos.rollback` moves between them with nix-env; the fact reads them.
"""

from __future__ import annotations

import json

import pytest

from tests.fleet import Fleet
from tests.integration.helpers import pyinfra

pytestmark = pytest.mark.fleet

PROFILES = "/nix/var/nix/profiles"
LOG = "/var/log/pbk-activations"
FLAKE = """{
  outputs = { self }: {
    nixosConfigurations.nixos01.config.system.build.toplevel = derivation {
      name = "nixos-system-nixos01-24.05.@REV@";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ ./builder.sh ];
      rev = "@REV@"; configRev = "@CONFIG_REV@"; special = "@SPECIAL@";
    };
  };
}
"""
BUILDER = r"""
/bin/mkdir -p "$out/bin" "$out/sw/bin" "$out/kernel-modules/lib/modules/6.6.$rev"
printf '%s' "24.05.$rev" > "$out/nixos-version"
[ -z "$special" ] || /bin/mkdir -p "$out/specialisation/$special"
if [ -n "$configRev" ]; then json="{\"nixosVersion\":\"24.05.$rev\",\"configurationRevision\":\"$configRev\"}"
else json="{\"nixosVersion\":\"24.05.$rev\"}"; fi
printf '#!/bin/sh\necho %s\n' "'$json'" > "$out/sw/bin/nixos-version"
printf '#!/bin/sh\nset -e\n[ "$1" != switch ] || ln -sfn %s /run/current-system\necho "$1 %s${PBK_VIA:+ via $PBK_VIA}" >> %s\n' "$out" "$out" /var/log/pbk-activations > "$out/bin/switch-to-configuration"
/bin/chmod +x "$out/bin/switch-to-configuration" "$out/sw/bin/nixos-version"
"""


@pytest.fixture(scope="module")
def setup(_fleet_session, tmp_path_factory):
    fleet = Fleet()
    try:
        fleet.up(["nixos01", "plain01"])
        # As a fresh Debian machine's nix-bin needs it here: no /etc/nix of its own; no binary cache (no network:
        # nix would retry cache.nixos.org for seconds); builds as root (no nixbld group exists); no sandbox (the
        # builder uses the host's /bin/sh).
        fleet.run("nixos01", "mkdir -p /etc/nix && printf 'substituters =\\nbuild-users-group =\\nsandbox = false\\n' >> /etc/nix/nix.conf && mkdir -p /srv/flake && touch /etc/NIXOS")
        fleet.path("nixos01", "/srv/flake/builder.sh").write_text(BUILDER)
        inventory = fleet.write_inventory(tmp_path_factory.mktemp("nixos") / "inventory.py", {}, {})
        yield {"fleet": fleet, "inventory": inventory}
    finally:
        fleet.down()


def configure(setup, rev, config_rev="", special=""):
    text = FLAKE.replace("@REV@", rev).replace("@CONFIG_REV@", config_rev).replace("@SPECIAL@", special)
    setup["fleet"].path("nixos01", "/srv/flake/flake.nix").write_text(text)


def run(setup, *args, host="nixos01"):
    return pyinfra(setup["inventory"], *args, *(["--limit", host] if host else []))


def sh(setup, cmd):
    return setup["fleet"].run("nixos01", cmd).stdout.strip()


def generations(setup):
    """The fact on both hosts, as `pyinfra INVENTORY fact facts.nixos.NixosGenerations` prints it."""
    out = pyinfra(setup["inventory"], "fact", "facts.nixos.NixosGenerations", yes=False)
    assert out.returncode == 0, out.stdout
    return json.loads(out.stdout[out.stdout.index("{"):out.stdout.rindex("}") + 1])


@pytest.fixture(scope="module")
def built(setup):
    """Three configurations built and switched to in turn: generations 1, 2, 3."""
    runs = []
    for rev, config_rev, special in (("r1", "", ""), ("r2", "c0ffee2", ""), ("r3", "c0ffee3", "gaming")):
        configure(setup, rev, config_rev, special)
        runs.append(run(setup, "tasks.nixos.rebuild", "flake=path:/srv/flake"))
    paths = {n: sh(setup, f"readlink -f {PROFILES}/system-{n}-link") for n in (1, 2, 3)}
    for n in (1, 2, 3):  # distinct, known dates: a generation's date is its link's mtime
        sh(setup, f"touch -h -d '2024-0{n}-15 12:00:00 UTC' {PROFILES}/system-{n}-link")
    sh(setup, f"ln -sfn {paths[1]} /run/booted-system")  # as if the host booted generation 1
    return {"runs": runs, "paths": paths}


def test_rebuild_builds_each_new_configuration_and_switches_to_it(setup, built):
    for result in built["runs"]:
        assert result.returncode == 0, result.stdout
        assert "rebuild: switched to /nix/store/" in result.stdout and "] Success" in result.stdout
    assert sh(setup, f"readlink {PROFILES}/system") == "system-3-link"
    assert sh(setup, "readlink -f /run/current-system") == built["paths"][3]
    assert sh(setup, f"cat {LOG}").splitlines() == [f"switch {built['paths'][n]}" for n in (1, 2, 3)]


def test_generations_fact_reads_the_real_tree_and_marks_the_current_one(setup, built):
    facts = generations(setup)
    assert facts["plain01"] is None  # not NixOS, no system profile: no generations, no error
    data = facts["nixos01"]
    paths = built["paths"]
    assert data["current"] == 3 and data["running"] == paths[3] and data["booted"] == paths[1]
    assert data["nixos"] is True and data["hostname"] == "nixos01"
    got = [(g["number"], g["date"], g["path"], g["nixos_version"], g["kernel_version"], g["configuration_revision"],
            g["specialisations"], g["current"], g["running"], g["booted"]) for g in data["generations"]]
    assert got == [
        (1, "2024-01-15T12:00:00+00:00", paths[1], "24.05.r1", "6.6.r1", None, [], False, False, True),
        (2, "2024-02-15T12:00:00+00:00", paths[2], "24.05.r2", "6.6.r2", "c0ffee2", [], False, False, False),
        (3, "2024-03-15T12:00:00+00:00", paths[3], "24.05.r3", "6.6.r3", "c0ffee3", ["gaming"], True, True, False),
    ]
    assert paths[3].endswith("-nixos-system-nixos01-24.05.r3")


def test_rebuild_of_the_running_configuration_changes_nothing(setup, built):
    again = run(setup, "tasks.nixos.rebuild", "flake=path:/srv/flake", "host_attr=nixos01")
    assert again.returncode == 0 and "No changes" in again.stdout and "] Success" not in again.stdout, again.stdout
    assert len(sh(setup, f"cat {LOG}").splitlines()) == 3
    assert sh(setup, f"ls {PROFILES} | grep -c '^system-.*-link$'") == "3"


def test_rollback_to_a_generation_switches_the_profile_and_activates_it(setup, built):
    rolled = run(setup, "tasks.nixos.rollback", "generation=1")
    assert rolled.returncode == 0 and "] Success" in rolled.stdout, rolled.stdout
    assert sh(setup, f"readlink {PROFILES}/system") == "system-1-link"
    assert sh(setup, "readlink -f /run/current-system") == built["paths"][1]
    assert sh(setup, f"tail -n 1 {LOG}") == f"switch {built['paths'][1]}"
    again = run(setup, "tasks.nixos.rollback", "generation=1")
    assert again.returncode == 0 and "No changes" in again.stdout and "] Success" not in again.stdout, again.stdout
    # current but not running (someone ran another generation's switch-to-configuration test): activate only
    sh(setup, f"ln -sfn {built['paths'][2]} /run/current-system")
    activate = run(setup, "tasks.nixos.rollback", "generation=1")
    assert activate.returncode == 0 and "] Success" in activate.stdout, activate.stdout
    assert sh(setup, "readlink -f /run/current-system") == built["paths"][1]
    assert sh(setup, f"ls {PROFILES} | grep -c '^system-.*-link$'") == "3"


def test_rollback_to_a_missing_generation_fails_that_host_and_says_which_exist(setup, built):
    missing = run(setup, "tasks.nixos.rollback", "generation=9", host=None)  # both hosts, each its own reason
    assert missing.returncode != 0
    assert "nixos01: generation: no system generation 9 (generations: 1, 2, 3)" in missing.stdout, missing.stdout
    assert "plain01: not a NixOS host" in missing.stdout, missing.stdout


def test_rebuild_boot_sets_the_boot_default_only_and_a_later_switch_activates_it(setup, built):
    configure(setup, "r4")
    running = sh(setup, "readlink -f /run/current-system")
    boot = run(setup, "tasks.nixos.rebuild", "flake=path:/srv/flake", "action=boot")
    assert boot.returncode == 0 and "rebuild: switched to" in boot.stdout, boot.stdout
    gen4 = sh(setup, f"readlink -f {PROFILES}/system-4-link")
    assert sh(setup, f"readlink {PROFILES}/system") == "system-4-link"
    assert sh(setup, "readlink -f /run/current-system") == running  # not activated
    assert sh(setup, f"tail -n 1 {LOG}") == f"boot {gen4}"
    again = run(setup, "tasks.nixos.rebuild", "flake=path:/srv/flake", "action=boot")
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout
    # the operation's connector arguments (here _env; _sudo alike) reach the script run at execute time
    switch = run(setup, "tasks.nixos.rebuild", "flake=path:/srv/flake", '_env={"PBK_VIA": "the-operation"}')
    assert switch.returncode == 0 and "] Success" in switch.stdout, switch.stdout
    assert sh(setup, "readlink -f /run/current-system") == gen4
    assert sh(setup, f"tail -n 1 {LOG}") == f"switch {gen4} via the-operation"
    assert sh(setup, f"ls {PROFILES} | grep -c '^system-.*-link$'") == "4"  # no new generation


def test_rebuild_of_a_configuration_that_does_not_evaluate_fails_with_nix_s_reason(setup, built):
    bad = run(setup, "tasks.nixos.rebuild", "flake=path:/srv/flake", "host_attr=nope")
    assert bad.returncode != 0
    assert "nixos01: cannot evaluate path:/srv/flake#nixosConfigurations.nope" in bad.stdout, bad.stdout
    assert "does not provide attribute" in bad.stdout
