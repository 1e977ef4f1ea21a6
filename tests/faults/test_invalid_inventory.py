"""Scenario 6 (issue 8): malformed inventories generated from inventory/schema.json are all rejected
before anything changes on any host.

The generator walks the schema from a valid host's data that uses every section (VALID) and breaks one
thing at a time, by the schema's own rules: a value of a type no branch accepts, an integer below its
minimum, a string outside an enum, breaking a pattern or a format (calendar, compression, repo, SSH
key, age recipient), an empty string or list where one is required to be non-empty, an unknown key,
a missing required key, a malformed name, a typo of a top-level key. Keys added to the schema later
are covered without a change here.

Most examples are checked in-process by the validator every deploy starts with
(`require_valid_inventory`); a few run through real `pyinfra -y INVENTORY deploys/...` against the
fault suite's fleet, which must show nothing changed on any host: no remote command, no file.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyinfra.api import Inventory

from pyinfra_backup.validate import InvalidHostData, _dotted, host_data_errors, load_schema, require_valid_inventory
from tests.faults.conftest import CLIENTS, SERVER, job
from tests.unit.test_validate import AGE, ED25519

HOST = "host03"
VALID = {
    "borgbackup": {
        "jobs": {"system": {**job(exclude=["*.pyc"], compression="auto,zstd", prune={"keep": {"daily": 7, "within": "2d"}},
                                  postgresqlDatabases=[{"name": "app"}], environment={"BORG_RELOCATED_REPO_ACCESS_IS_OK": "no"}),
                            "startAt": ["daily", "Mon *-*-* 03:00"]}},
        "repos": {"legacy": {"path": "/srv/legacy", "authorizedKeys": [ED25519], "quota": "10G"}},
        "operatorKeys": [ED25519], "operatorIdentity": "~/.ssh/id_ed25519", "lockWait": 5,
    },
    "system_state": {"paths": ["/etc/machine-id"], "job": "system", "ageRecipients": [AGE]},
    "config_repo": {"path": "/srv/config", "remotes": {"origin": "git@host04:/srv/git/config.git"}, "branches": ["main"],
                    "push_tags": True, "ssh_command": "ssh -o BatchMode=yes"},
    "agenix": {"rules": "secrets/secrets.nix", "identities": ["~/.ssh/id_ed25519"], "force": False},
    "monitoring": {"textfile_dir": "/var/lib/prometheus/node-exporter", "ping_url": "https://hc-ping.com/x"},
    "ssh_strict_host_key_checking": "yes",  # a repo server: the operator's connection to it must be strict
    "backup_force": False, "recover_archive": "latest", "recover_jobs": ["system"], "recover_generation": 3,
}
BAD_FORMATS = {
    "systemd-calendar": ["every tuesday", "*-*-* 25:00:00", "Mon..Funday", "hourly daily", "*-*-* 02:61"],
    "borg-compression": ["zstd,99", "gzip", "auto", "lz4,3", "obfuscate,7,zstd"],
    "borg-repo": ["relative/path", "ftp://host/repo", "host:", "/srv/repo::archive", " /srv/repo"],
    "ssh-public-key": ["ssh-ed25519 not-base64!", "ssh-foo AAAAC3Nz", 'command="x" ssh-ed25519 AAAA'],
    "age-recipient": ["age1notvalid", "x25519 abc"],
}
VALUES_BY_TYPE = {"null": None, "boolean": True, "integer": 7, "number": 1.5, "string": "x", "array": ["x"], "object": {"x": 1}}


@dataclass(frozen=True)
class Mutation:
    path: tuple  # where the value goes (dict keys; 0 for the first item of a list)
    kind: str
    values: st.SearchStrategy
    reported: str = ""  # a key under `path` that the message names (unknown, missing or malformed key)

    def apply(self, value) -> tuple[dict, str]:
        """VALID with this mutation, and the key path the validator must name."""
        data = copy.deepcopy(VALID)
        if not self.path:  # a top-level key
            data[value[0]] = value[1]
            return data, value[0]
        *above, last = self.path
        parent = data
        for key, below in zip(above, [*above[1:], last]):
            empty = [] if isinstance(below, int) else {}
            if isinstance(parent, list):
                parent[:] = parent or [empty]
            elif not isinstance(parent.get(key), (list, dict)):
                parent[key] = empty
            parent = parent[key]
        key = value[0] if self.kind in ("unknown key", "bad name") else self.reported
        if self.kind in ("missing key", "unknown key", "bad name"):
            if isinstance(parent, list):
                parent[:] = parent or [{}]
            elif not isinstance(parent.get(last), dict):
                parent[last] = {}
            if self.kind == "missing key":
                del parent[last][key]
            else:
                parent[last][key] = value[1]
        elif isinstance(last, int):
            parent[:] = [value]
        else:
            parent[last] = value
        return data, _dotted([*self.path, *([key] if key else [])])


def resolve(node: dict) -> dict:
    while "$ref" in node:
        extra = {k: v for k, v in node.items() if k != "$ref"}
        node = {**load_schema()["$defs"][node["$ref"].rsplit("/", 1)[1]], **extra}
    return node


def branches(node: dict) -> list[dict]:
    node = resolve(node)
    if "anyOf" in node:
        return [b for sub in node["anyOf"] for b in branches(sub)]
    return [node]


def types_of(node: dict) -> set[str] | None:
    """The JSON types some branch accepts; None when a branch accepts any type."""
    found = set()
    for branch in branches(node):
        kind = branch.get("type") or ("string" if "enum" in branch and all(isinstance(v, str) for v in branch["enum"]) else None)
        if kind is None:
            return None
        found |= {kind} if isinstance(kind, str) else set(kind)
    return found | ({"integer"} if "number" in found else set())


def string_mutations(path: tuple, node: dict) -> list[Mutation]:
    strings = [b for b in branches(node) if b.get("type") in ("string", ["string", "null"]) or "enum" in b]
    if len(strings) != 1:  # several string forms (a job name or "true"...): a bad string for one is good for another
        return []
    rule, found = strings[0], []
    if "enum" in rule:
        found.append(Mutation(path, "not in enum", st.text(min_size=1, max_size=8).filter(lambda s: s not in rule["enum"])))
    if "pattern" in rule:
        pattern = rule["pattern"]
        found.append(Mutation(path, "pattern", st.text(max_size=10).filter(lambda s: not re.search(pattern, s))))
    if rule.get("format") in BAD_FORMATS:
        found.append(Mutation(path, f"bad {rule['format']}", st.sampled_from(BAD_FORMATS[rule["format"]])))
    if rule.get("minLength"):
        found.append(Mutation(path, "empty string", st.just("")))
    return found


def mutations(node: dict, path: tuple = (), value=None) -> list[Mutation]:
    """Every way to break VALID at `path` (and below), `node` being the schema there."""
    node, found = resolve(node), []
    accepted = types_of(node)
    if path and accepted is not None:
        wrong = [v for t, v in VALUES_BY_TYPE.items() if t not in accepted and not (t == "integer" and "number" in accepted)]
        found.append(Mutation(path, "wrong type", st.sampled_from(wrong)))
    if path:
        found += string_mutations(path, node)
    for branch in branches(node):
        if "minimum" in branch:
            found.append(Mutation(path, "below minimum", st.integers(max_value=branch["minimum"] - 1)))
        if branch.get("type") == "array" and "items" in branch:
            found += mutations(branch["items"], (*path, 0), (value or [None])[0] if isinstance(value, list) else None)
        if branch.get("type") != "object":
            continue
        properties = branch.get("properties", {})
        if path and branch.get("additionalProperties") is False:
            names = st.from_regex(r"\A[a-z][a-zA-Z]{2,9}\Z").filter(lambda k: k not in properties)
            found.append(Mutation(path, "unknown key", st.tuples(names, st.just(1))))
        if isinstance(value, dict):
            found += [Mutation(path, "missing key", st.just(None), key) for key in branch.get("required", []) if key in value]
        for key, sub in properties.items():
            if path or key in VALID:  # pyinfra's own top-level keys are not ours to break
                found += mutations(sub, (*path, key), value.get(key) if isinstance(value, dict) else None)
        entries = branch.get("additionalProperties")
        if isinstance(entries, dict) and isinstance(value, dict) and value:
            name, entry = next(iter(value.items()))
            found += mutations(entries, (*path, name), entry)
            pattern = resolve(branch.get("propertyNames", {})).get("pattern")
            if pattern:
                bad = st.text(min_size=1, max_size=10).filter(lambda s: not re.search(pattern, s))
                found.append(Mutation(path, "bad name", st.tuples(bad, st.just(copy.deepcopy(entry)))))
    if not path:  # a typo in this project's namespaces of top-level keys
        found.append(Mutation((), "unknown key", st.tuples(st.sampled_from(["recover_archvie", "backup_forced", "recover_target_dir"]),
                                                           st.just("x"))))
    return found


MUTATIONS = mutations(load_schema(), (), VALID)


@st.composite
def malformed(draw):
    kind = draw(st.sampled_from(sorted({m.kind for m in MUTATIONS})))  # every kind as likely, however many sites
    mutation = draw(st.sampled_from([m for m in MUTATIONS if m.kind == kind]))
    data, where = mutation.apply(draw(mutation.values))
    return mutation.kind, data, where


def test_the_base_data_is_valid_and_every_section_can_be_broken():
    assert host_data_errors(HOST, VALID) == []
    kinds = {m.kind for m in MUTATIONS}
    assert {"wrong type", "below minimum", "not in enum", "pattern", "bad systemd-calendar", "bad borg-repo",
            "unknown key", "missing key", "bad name", "empty string"} <= kinds
    assert {m.path[0] for m in MUTATIONS if m.path} >= {"borgbackup", "system_state", "config_repo", "agenix", "monitoring"}


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(malformed())
def test_6_malformed_host_data_is_rejected_naming_host_and_key(case):
    kind, data, where = case
    state = SimpleNamespace(inventory=Inventory(([("host01", VALID), (HOST, data)], {})))
    with pytest.raises(InvalidHostData) as raised:
        require_valid_inventory(state)
    lines = str(raised.value).splitlines()[1:]
    assert lines and all(line.startswith(f"{HOST}: ") for line in lines), lines  # the valid host is not blamed
    assert any(line.startswith(f"{HOST}: {where}") for line in lines), (kind, where, lines)


# --- a few through real deploys on the fleet ---------------------------------------------------------


def host_state(fleet) -> dict[str, str]:
    """What a run could change on each host: our state directory, the server's repos and keys."""
    listing = ("find /var/lib/pyinfra-backup /var/lib/borgbackup /srv/config -printf '%p %s %T@\\n' 2>/dev/null | sort; "
               "cat /var/lib/borgbackup/.ssh/authorized_keys 2>/dev/null")
    return {name: fleet.run(name, listing, check=False).stdout for name in [*CLIENTS, SERVER]}


@pytest.mark.fleet
@settings(max_examples=3, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(malformed(), st.sampled_from(["deploys/backup.py", "deploys/backup_server.py", "deploys/config_repo.py"]))
def test_6_a_malformed_inventory_stops_a_real_run_before_any_host_changes(faults, case, deploy):
    kind, data, where = case
    fleet = faults.fleet
    inventory = faults.write_inventory("inventory-malformed.py", **{HOST: data})
    before, commands = host_state(fleet), {name: fleet.exec_count(name) for name in [*CLIENTS, SERVER]}
    run = faults.pyinfra(deploy, "--data", "backup_force=true", inventory=inventory)
    assert run.returncode != 0
    assert f"invalid host data in {inventory} (" in run.stdout and "nothing was changed" in run.stdout, run.stdout
    assert "pyinfra error in" not in run.stdout and "Traceback" not in run.stdout  # one clean block, not a crash
    assert f"{HOST}: {where}" in run.stdout, (kind, run.stdout)
    assert {name: fleet.exec_count(name) for name in [*CLIENTS, SERVER]} == commands  # not one remote command
    assert host_state(fleet) == before
