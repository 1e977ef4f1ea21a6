"""pyinfra_backup/nixos.py: the generations script run by sh on a real symlink tree, its parsing,
and the rollback/rebuild command lines."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone

import pytest

from pyinfra_backup.nixos import (
    PROFILE, attr_path, eval_argv, generation_sections, parse_generations, rebuild_script, rollback_commands, toplevel,
)
from pyinfra_backup.shell import parse_sections, sectioned_script

VERSION_SCRIPT = "#!/bin/sh\necho '{}'\n"


def make_generation(store, name, version, kernel=None, revision=None, specialisations=(), switchable=True):
    path = store / name
    (path / "bin").mkdir(parents=True)
    (path / "nixos-version").write_text(version)
    if switchable:
        (path / "bin/switch-to-configuration").write_text("#!/bin/sh\n")
        (path / "bin/switch-to-configuration").chmod(0o755)
    if kernel:
        (path / "kernel-modules/lib/modules" / kernel).mkdir(parents=True)
    for name in specialisations:
        (path / "specialisation" / name).mkdir(parents=True)
    data = {"nixosVersion": version, **({"configurationRevision": revision} if revision else {})}
    (path / "sw/bin").mkdir(parents=True)
    (path / "sw/bin/nixos-version").write_text(VERSION_SCRIPT.format(json.dumps(data)))
    (path / "sw/bin/nixos-version").chmod(0o755)
    return path


def link(profiles, number, target, mtime):
    path = profiles / f"system-{number}-link"
    path.symlink_to(target)
    os.utime(path, (mtime, mtime), follow_symlinks=False)


def read(profile):
    out = subprocess.run(["sh", "-c", sectioned_script(generation_sections(str(profile)))],
                         capture_output=True, text=True, check=True).stdout
    return parse_generations(parse_sections(out.splitlines()), str(profile))


@pytest.fixture
def tree(tmp_path):
    store, profiles = tmp_path / "store", tmp_path / "profiles"
    profiles.mkdir()
    first = make_generation(store, "aaa-nixos-system-web-23.11.1", "23.11.1", kernel="6.1.60")
    second = make_generation(store, "bbb-nixos-system-web-24.05.2", "24.05.2", kernel="6.6.30",
                             revision="0123abcd", specialisations=("gaming", "safe"))
    third = make_generation(store, "ccc-nixos-system-web-24.05.3", "24.05.3", kernel="6.6.31", revision="4567ef01")
    link(profiles, 1, first, 1_700_000_000)
    link(profiles, 2, second, 1_710_000_000)
    link(profiles, 12, third, 1_720_000_000)  # numbers need not be contiguous
    link(profiles, 13, store / "gone-nixos-system-web-24.05.4", 1_730_000_000)  # garbage-collected
    (profiles / "system").symlink_to("system-2-link")
    (profiles / "system-x-link").symlink_to(first)  # not a generation
    (profiles / "other-3-link").symlink_to(first)  # another profile's
    return profiles / "system", {1: first, 2: second, 12: third}


def test_a_real_tree_of_four_generations_parses_with_the_current_one_marked(tree):
    profile, paths = tree
    system = read(profile)
    assert [g.number for g in system.generations] == [1, 2, 12, 13]
    assert system.current == 2 and system.current_generation.path == str(paths[2])
    assert [g.current for g in system.generations] == [False, True, False, False]
    first, second, third, gone = system.generations
    assert first.date == datetime.fromtimestamp(1_700_000_000, timezone.utc)  # the link's own mtime
    assert (first.nixos_version, first.kernel_version, first.configuration_revision) == ("23.11.1", "6.1.60", None)
    assert (second.configuration_revision, second.specialisations) == ("0123abcd", ("gaming", "safe"))
    assert third.path == str(paths[12]) and third.kernel_version == "6.6.31" and third.exists and third.switchable
    assert not gone.exists and not gone.switchable and gone.nixos_version is None
    assert system.nixos is os.path.exists("/etc/NIXOS")
    assert system.to_json()["generations"][0]["date"] == "2023-11-14T22:13:20+00:00"


def test_no_profile_and_not_nixos_is_none(tmp_path):
    if os.path.exists("/etc/NIXOS"):
        pytest.skip("this machine is NixOS")
    assert read(tmp_path / "system") is None


def test_running_and_booted_come_from_their_own_sections(tree):
    profile, paths = tree
    out = subprocess.run(["sh", "-c", sectioned_script(generation_sections(str(profile)))],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    sections = parse_sections(out)
    sections["running"].stdout, sections["running"].rc = [str(paths[12])], 0
    sections["booted"].stdout, sections["booted"].rc = [str(paths[1])], 0
    system = parse_generations(sections, str(profile))
    assert [(g.number, g.running, g.booted) for g in system.generations if g.running or g.booted] == [
        (1, False, True), (12, True, False)]


def test_rollback_switches_the_profile_then_activates_it():
    assert rollback_commands(3, already_current=False) == [
        f"nix-env -p {PROFILE} --switch-generation 3", f"{PROFILE}/bin/switch-to-configuration switch"]
    assert rollback_commands(3, already_current=True) == [f"{PROFILE}/bin/switch-to-configuration switch"]


def test_installable_quotes_host_attributes_that_need_it():
    assert toplevel("github:me/fleet", "web-1") == "github:me/fleet#nixosConfigurations.web-1.config.system.build.toplevel"
    assert attr_path("web.example.org") == '"web.example.org"'
    assert eval_argv("/etc/nixos", "h")[-3:] == ["eval", "--raw", "/etc/nixos#nixosConfigurations.h.config.system.build.toplevel.outPath"]
    with pytest.raises(ValueError, match="host_attr"):
        toplevel("/etc/nixos#web", "web")


def test_rebuild_script_compares_before_it_switches():
    script = rebuild_script("/etc/nixos", "web 1").splitlines()
    assert script[2] == ("nix --extra-experimental-features 'nix-command flakes' build --out-link \"$_d/result\" "
                         "'/etc/nixos#nixosConfigurations.\"web 1\".config.system.build.toplevel'")
    assert '[ "$(readlink -f /run/current-system)" != "$_out" ]' in script[5]
    assert script[6].strip() == 'if [ $_set = 1 ]; then nix-env -p /nix/var/nix/profiles/system --set "$_out"; fi'
    assert script[7].strip() == '"$_out/bin/switch-to-configuration" switch'
    boot = rebuild_script("/etc/nixos", "web", action="boot")
    assert "/run/current-system" not in boot and '"$_out/bin/switch-to-configuration" boot' in boot
    with pytest.raises(ValueError, match="switch, boot"):
        rebuild_script("/etc/nixos", "web", action="test")


def test_bad_profile_path_is_refused():
    with pytest.raises(ValueError, match="profile"):
        generation_sections("/nix/var/nix/profiles/sys tem")
