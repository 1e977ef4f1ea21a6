"""Every fact of `facts/` prints as JSON with `pyinfra INVENTORY fact facts.<module>.<Fact> [key=value ...]`
(pyinfra's CLI JSON-serialises a fact's value: our dataclasses give it `to_json`), on a fleet host that
has a job with a real archive and a config repo, so the values are not all empty."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from pyinfra.api import FactBase

import facts
from tests.integration.helpers import PROJECT, pyinfra

pytestmark = pytest.mark.fleet

REPO = "/var/lib/pbk-facts/repo"
CONFIG = "/srv/pbk-facts-config"
BORG = "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes borg"
ARGUMENTS = {  # the facts that need arguments, as a user gives them on the command line
    "agenix.AgenixRules": ["path=/srv/secrets.nix"],
    "borg.BorgServer": ['users=["borg"]', 'groups=["borg"]', 'paths=["/var/lib/borgbackup"]'],
    "borg.RestoreTarget": ["path=/srv/pbk-facts-restore"],
    "borg.BorgRepoFiles": [f"path={REPO}"],
    "data.DatabaseRestoreState": ["planned=system", "archive=host01-system-none", "database=shop", "user=postgres"],
    "data.VolumeRestoreState": ["planned=system", "archive=host01-system-none", "volume=grafana"],
    "git.GitTag": ["tag=v1.0.0", "ref=HEAD"],
    "nixos.NixosToplevel": ["flake=/srv/no-flake", "attr=host01"],
    "offsite.OffsiteRepos": [f'repos={{"host01": "{REPO}"}}'],
    "recover.ConfigCheckout": [f"path={CONFIG}"],
    "scheduler.SchedulerUnits": ["inventory=/etc/hostname"],
    "state.StateDigest": ['paths=["/etc/machine-id"]', "job=system"],
    "state.StateArchive": [f"borg={BORG}", f"url={REPO}", "base_name=host01-system"],
}


def fact_classes() -> list[str]:
    """`module.Class` of every FactBase subclass defined in facts/."""
    found = []
    for module_info in pkgutil.iter_modules(facts.__path__):
        module = importlib.import_module(f"facts.{module_info.name}")
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, FactBase) and value.__module__ == module.__name__:
                found.append(f"{module_info.name}.{name}")
    return sorted(found)


def printed_json(output: str) -> dict:
    """The JSON pyinfra prints after `--> Fact data for: ...`, up to its next `-->` line."""
    match = re.search(r"^--> Fact data for: .*?\n(.*?)^-->", output, re.S | re.M)
    assert match, output
    return json.loads(match.group(1))


def test_every_fact_prints_json_from_the_command_line(fleet_factory, tmp_path):
    fleet = fleet_factory(["host01"])
    fleet.run("host01", f"mkdir -p /srv/pbk-facts && echo data > /srv/pbk-facts/file && "
                        f"git init -q {CONFIG} && git -C {CONFIG} -c user.email=a@b -c user.name=a commit -q "
                        "--allow-empty -m first")
    data = {"borgbackup": {"jobs": {"system": {"paths": ["/srv/pbk-facts"], "repo": REPO,
                                               "encryption": {"mode": "none"}, "startAt": "daily"}}},
            "config_repo": {"path": CONFIG, "remotes": {"origin": "/srv/pbk-facts-remote.git"}}}
    inventory = fleet.write_inventory(tmp_path / "inventory.py", {"host01": data})
    backup = pyinfra(inventory, str(PROJECT / "deploys/backup.py"))
    assert backup.returncode == 0, backup.stdout

    classes = fact_classes()
    assert len(classes) >= 20 and set(ARGUMENTS) <= set(classes), set(ARGUMENTS) - set(classes)
    with ThreadPoolExecutor(4) as pool:  # one pyinfra process per fact, as a user runs them
        runs = dict(zip(classes, pool.map(
            lambda name: pyinfra(inventory, "fact", f"facts.{name}", *ARGUMENTS.get(name, []), yes=False, timeout=180),
            classes)))
    values = {}
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.stdout[-3000:])
        assert "Cannot serialize" not in run.stdout and "Traceback" not in run.stdout, (name, run.stdout[-3000:])
        values[name] = printed_json(run.stdout)["host01"]

    # the dataclasses print as objects of their fields, with real content
    client = values["borg.BorgClient"]
    assert client["records"]["system"]["create"]["archive"]["name"].startswith("host01-system-"), client
    assert client["records"]["system"]["attempt"]["rc"] == 0
    [archive] = values["borg.BorgRepos"]["system"]["archives"]
    assert archive["name"].startswith("host01-system-") and re.match(r"\d{4}-\d\d-\d\dT", archive["time"]), archive
    assert values["borg.BackupFreshness"]["system"]["status"] == "fresh"
    assert values["git.GitRepoSync"]["path"] == CONFIG and values["git.ConfigRepoSync"]["path"] == CONFIG
    assert values["recover.ConfigCheckout"]["exists"] is True
    assert set(values["state.StateDigest"]["entries"]) == {"/etc/machine-id"}
    assert values["scheduler.SchedulerUnits"]["inventory_ok"] is True
    assert isinstance(values["borg.SshHostKeys"], list) and values["borg.SshHostKeys"]
