"""Host data validation: inventory/schema.json + pyinfra_backup.validate."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from pyinfra.api.exceptions import PyinfraError

from tests.unit.seed import SEED_JOB
from pyinfra_backup.validate import (
    InvalidHostData,
    check_calendar,
    check_compression,
    check_repo,
    host_data_errors,
    load_schema,
    require_valid_inventory,
)

ROOT = Path(__file__).resolve().parents[2]
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDdfcEh8NgnivsyQLWZaKdxw2kxRiX+TZ3YtGS41ok/+ operator@laptop"
AGE = "age1gj8yp9t4mnkmg3vwt7s2wzq33p8uy0syz9n30vl6rfy24l0f447qlkmkfq"

# The seed guide's job, as is.
SEED = {"borgbackup": {"jobs": {"system": SEED_JOB}}}

# `nix eval --json .#nixosConfigurations.host01.config.services.borgbackup`: every option, unused ones at
# their defaults, nullable ones null, coercedTo-str arguments as strings.
NIX_EXPORT = {
    "jobs": {
        "system": {
            "appendFailedSuffix": True, "archiveBaseName": "host01-system", "compression": "auto,lzma",
            "dateFormat": "+%Y-%m-%dT%H:%M:%S", "doInit": True, "dumpCommand": None,
            "encryption": {"mode": "repokey-blake2", "passCommand": "cat /run/secrets/borg-passphrase",
                           "passphrase": None},
            "environment": {"BORG_RSH": "ssh -i /etc/ssh/borg_ed25519"},
            "exclude": ["/home/*/.cache", "/var/lib/docker"], "extraArgs": "", "extraCompactArgs": "",
            "extraCreateArgs": "--stats --checkpoint-interval 600", "extraInitArgs": "", "extraPruneArgs": "",
            "failOnWarnings": True, "group": "root", "inhibitsSleep": False,
            "paths": ["/home", "/var/lib", "/etc/nixos"], "patterns": [], "persistentTimer": False,
            "postCreate": "", "postHook": "", "postInit": "", "postPrune": "", "preHook": "", "privateTmp": True,
            "prune": {"keep": {"daily": 7, "weekly": 4, "monthly": -1, "within": "1d"}, "prefix": "host01-system"},
            "readWritePaths": [], "removableDevice": False, "repo": "ssh://borg@backup-server/./host01",
            "startAt": ["*-*-* 02:00:00"], "user": "root", "wrapper": "borg-job-system",
        },
        "media": {
            "appendFailedSuffix": True, "archiveBaseName": None, "compression": "none",
            "dateFormat": "-u +%s", "doInit": False, "dumpCommand": None,
            "encryption": {"mode": "none", "passCommand": None, "passphrase": None},
            "environment": {}, "exclude": [], "extraArgs": "", "extraCompactArgs": "", "extraCreateArgs": "",
            "extraInitArgs": "", "extraPruneArgs": "", "failOnWarnings": False, "group": "media",
            "inhibitsSleep": True, "paths": "/srv/media", "patterns": ["+ /srv/media/photos", "- /srv/media/*"],
            "persistentTimer": True, "postCreate": "", "postHook": "echo done", "postInit": "", "postPrune": "",
            "preHook": "mount /mnt/usb", "privateTmp": False, "prune": {"keep": {}, "prefix": None},
            "readWritePaths": ["/mnt/usb"], "removableDevice": True, "repo": "/mnt/usb/borg",
            "startAt": [], "user": "media", "wrapper": None,
        },
    },
    "repos": {
        "host01": {"allowSubRepos": False, "authorizedKeys": [], "authorizedKeysAppendOnly": [ED25519],
                   "group": "borg", "path": "/var/lib/borgbackup/host01", "quota": None, "user": "borg"},
        "host02": {"allowSubRepos": True, "authorizedKeys": [ED25519], "authorizedKeysAppendOnly": [],
                   "group": "borg", "path": "/var/lib/borgbackup/host02", "quota": "1.5T", "user": "borg"},
    },
}


def job(**changes) -> dict:
    """The seed job with changes (None deletes a key), as host data."""
    data = copy.deepcopy(SEED)
    system = data["borgbackup"]["jobs"]["system"]
    for key, value in changes.items():
        if value is None:
            system.pop(key, None)
        else:
            system[key] = value
    return data


def errors(data) -> list[str]:
    return host_data_errors("host01", data)


def calendar_error(spec: str) -> str:
    """parse_calendar's own reason (its wording belongs to pyinfra_backup.schedule), without the spec."""
    with pytest.raises(ValueError) as raised:
        check_calendar(spec)
    assert not str(raised.value).startswith("invalid calendar spec")
    return str(raised.value)


J = "host01: borgbackup.jobs.system"
KEEP = "expected an integer >= -1 (-1 = unlimited)"
REPO = "expected a borg repository (an absolute local path, ssh://user@host[:port]/path or user@host:path)"
COMPRESSION = ("expected a borg compression spec (none, lz4, zstd[,1-22], zlib[,0-9], lzma[,0-9], auto,<spec>, "
               "obfuscate,<1-6|110-123>,<spec>)")
PASS = "expected a command that prints the passphrase (borg needs one for every encryption mode except none)"
KEY = "expected an SSH public key line (type, base64 key, optional comment; no options)"
JOB_KEYS = ", ".join(load_schema()["$defs"]["job"]["properties"])
TOP_KEYS = ", ".join(load_schema()["properties"])
BORG_KEYS = ", ".join(load_schema()["$defs"]["borgbackup"]["properties"])


# --- positive cases --------------------------------------------------------------------------------

def test_schema_is_valid_2020_12():
    jsonschema.Draft202012Validator.check_schema(load_schema())


def test_seed_job_validates_as_is():
    assert errors(SEED) == []


def test_full_nixos_export_with_nulls_validates():
    assert errors({"borgbackup": NIX_EXPORT}) == []


def test_every_section_and_pyinfra_keys_validate():
    data = job(checks={"frequency": "30d", "verifyData": True}, volumes=["grafana-data"],
               postgresqlDatabases=[{"name": "app"}, {"name": "wiki", "user": "wiki", "format": "tar"},
                                    {"name": "Legacy_DB-2", "format": "plain"}],
               extraCreateArgs=["--stats"], environment={"BORG_RSH": "ssh -i /root/.ssh/backup"})
    data["borgbackup"] |= {"operatorKeys": [ED25519], "operatorIdentity": "~/.ssh/id_ed25519", "lockWait": 0}
    data |= {
        "ssh_user": "root", "ssh_port": 2222, "_sudo": True, "anything_else": object(),  # pyinfra's / user's own
        "system_state": {"paths": ["/etc/machine-id", "/etc/ssh/ssh_host_*"], "job": "system",
                         "ageRecipients": [AGE, ED25519], "ageDir": "recovery"},
        "config_repo": {"path": "/etc/nixos", "remotes": {"origin": "git@github.com:me/nixos.git"},
                        "branches": ["main", "release/24.11"], "push_tags": True},
        "agenix": {"rules": "secrets/secrets.nix", "identities": ["~/.ssh/id_ed25519"], "force": False},
        "monitoring": {"textfile_dir": "/var/lib/prometheus/node-exporter", "ping_url": "https://hc-ping.com/x"},
        "recover_archive": "latest", "recover_jobs": ["system"], "recover_target": "/mnt/restore",
        "recover_ref": "v1.2.0", "recover_generation": 42, "backup_force": ["system"],
    }
    assert errors(data) == []


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs ssh-keygen")
@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_real_ssh_keys_and_age_recipients(tmp_path, kind):
    import pyrage

    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "me@laptop", "-f", tmp_path / "key"], check=True)
    key = (tmp_path / "key.pub").read_text().strip()
    age = str(pyrage.x25519.Identity.generate().to_public())
    borg = SEED["borgbackup"] | {"operatorKeys": [key], "repos": {"c": {"authorizedKeys": [key]}}}
    data = SEED | {"borgbackup": borg,
                   "system_state": {"ageRecipients": [age] + ([key] if kind != "ecdsa" else [])}}
    assert errors(data) == []
    if kind == "ecdsa":  # age encrypts to ssh-ed25519 and ssh-rsa keys only
        [line] = errors(SEED | {"system_state": {"ageRecipients": [key]}})
        assert line.startswith("host01: system_state.ageRecipients[0]: expected an age recipient (age1...) or an "
                               "ssh-ed25519/ssh-rsa public key: not a valid age recipient, got 'ecdsa-sha2-nistp256 ")


@pytest.mark.parametrize("force", [True, False, "true", "false", "system", ["system"], (), None])
def test_backup_force_forms(force):
    # pyinfra --data: "true"/"false" -> bool, digits -> int, then JSON, else the string
    assert errors(SEED | {"backup_force": force}) == []


@pytest.mark.parametrize("repo", [
    "/srv/borg/host01", "borg@backup-server:.", "borg@backup-server:/backups/host01", "server:repo",
    "borg@10.0.0.2:~/repo", "ssh://borg@server/./host01", "ssh://borg@server:2222/~/host01",
    "ssh://server/srv/borg", "ssh://borg@[fd00::1]:22/srv/borg",
])
def test_repo_forms(repo):
    check_repo(repo)


@pytest.mark.parametrize("spec", [
    "none", "lz4", "zstd", "zstd,1", "zstd,22", "zlib,0", "lzma,9", "auto,lzma", "auto,zstd,3", "auto,none",
    "obfuscate,110,none", "obfuscate,3,auto,zstd,10", "obfuscate,6,lz4", "obfuscate,123,zlib,5",
])
def test_compression_forms(spec):
    check_compression(spec)


@pytest.mark.parametrize("mode", ["none", "authenticated", "keyfile"])
def test_encryption_modes(mode):
    encryption = {"mode": mode} if mode == "none" else {"mode": mode, "passCommand": "cat /run/pass"}
    assert errors(job(encryption=encryption)) == []


def test_keep_minus_one_and_within():
    assert errors(job(prune={"keep": {"within": "12H", "yearly": -1, "secondly": 0}, "prefix": ""})) == []


# --- malformed inputs: one exact message each -------------------------------------------------------

MALFORMED = [
    # retention
    (job(prune={"keep": {"daily": -2}}), f"{J}.prune.keep.daily: {KEEP}, got -2"),
    (job(prune={"keep": {"weekly": "4"}}), f"{J}.prune.keep.weekly: {KEEP}, got '4'"),
    (job(prune={"keep": {"hourly": 1.5}}), f"{J}.prune.keep.hourly: {KEEP}, got 1.5"),
    (job(prune={"keep": {"monthly": True}}), f"{J}.prune.keep.monthly: {KEEP}, got True"),
    (job(prune={"keep": {"within": "1x"}}),
     f"{J}.prune.keep.within: expected an interval like 12H, 1d, 2w, 3m or 1y, got '1x'"),
    (job(prune={"keep": {"dayly": 7}}),
     f"{J}.prune.keep.dayly: unknown key (expected one of: within, secondly, minutely, hourly, daily, weekly, "
     "monthly, yearly), did you mean daily?"),
    (job(prune={"keep": {}, "prefix": 3}), f"{J}.prune.prefix: expected a string or null, got 3"),
    # unknown keys and wrong types
    (job(pathz=["/home"]), f"{J}.pathz: unknown key (expected one of: {JOB_KEYS}), did you mean paths?"),
    ({"borgbackup": {"job": {}}},
     f"host01: borgbackup.job: unknown key (expected one of: {BORG_KEYS}), did you mean jobs?"),
    (SEED | {"borgbackups": {}},
     f"host01: borgbackups: unknown key (expected one of: {TOP_KEYS}), did you mean borgbackup?"),
    (SEED | {"backup_forse": True},
     f"host01: backup_forse: unknown key (expected one of: {TOP_KEYS}), did you mean backup_force?"),
    (SEED | {"recover_archiv": "latest"},
     f"host01: recover_archiv: unknown key (expected one of: {TOP_KEYS}), did you mean recover_archive?"),
    ({"borgbackup": []}, "host01: borgbackup: expected a mapping, got []"),
    (job(doInit="true"), f"{J}.doInit: expected true or false, got 'true'"),
    (job(extraCreateArgs=5), f"{J}.extraCreateArgs: expected a list of strings or a string, got 5"),
    (job(exclude=["*.tmp", 3]), f"{J}.exclude[1]: expected a string, got 3"),
    (job(environment={"BORG_RSH": 22}), f"{J}.environment.BORG_RSH: expected a string, got 22"),
    # paths
    (job(paths="home"), f"{J}.paths: expected an absolute path, got 'home'"),
    (job(paths=["/home", "var/lib"]), f"{J}.paths[1]: expected an absolute path, got 'var/lib'"),
    (job(paths=5), f"{J}.paths: expected an absolute path or a list of absolute paths, got 5"),
    (job(paths=None), f"{J}: expected something to back up: paths, postgresqlDatabases or volumes "
                      "(dumpCommand is not used), got none of them"),
    (job(readWritePaths=["tmp"]), f"{J}.readWritePaths[0]: expected an absolute path, got 'tmp'"),
    # startAt
    (job(startAt=3), f"{J}.startAt: expected a systemd calendar spec or a list of them, got 3"),
    # compression
    (job(compression="zstd,23"), f"{J}.compression: {COMPRESSION}: zstd level must be 1-22, got 'zstd,23'"),
    (job(compression="gzip"), f"{J}.compression: {COMPRESSION}: unknown algorithm 'gzip', got 'gzip'"),
    (job(compression="auto"),
     f"{J}.compression: {COMPRESSION}: auto needs a compression spec after it, e.g. auto,zstd, got 'auto'"),
    (job(compression="obfuscate,7,zstd"),
     f"{J}.compression: {COMPRESSION}: obfuscate needs a level 1-6 or 110-123, got 'obfuscate,7,zstd'"),
    (job(compression="lz4,3"), f"{J}.compression: {COMPRESSION}: lz4 takes no level, got 'lz4,3'"),
    # encryption
    (job(encryption={"mode": "aes256", "passCommand": "cat /p"}),
     f"{J}.encryption.mode: expected one of: repokey-blake2, repokey, keyfile-blake2, keyfile, "
     "authenticated-blake2, authenticated, none, got 'aes256'"),
    (job(encryption={"mode": "repokey"}), f"{J}.encryption.passCommand: missing, {PASS}"),
    (job(encryption={"mode": "authenticated-blake2"}), f"{J}.encryption.passCommand: missing, {PASS}"),
    (job(encryption={"mode": "keyfile", "passCommand": None}), f"{J}.encryption.passCommand: {PASS}, got None"),
    (job(encryption={"mode": "repokey", "passCommand": "cat /p", "passphrase": "hunter2"}),
     f"{J}.encryption.passphrase: expected null (a passphrase in host data would leak: use "
     "encryption.passCommand, a command that prints it), got a value (not shown)"),
    (job(encryption=None), f"{J}.encryption: missing, expected a mapping {{mode, passCommand}}"),
    (job(encryption={"mode": "none", "passcommand": "x"}),
     f"{J}.encryption.passcommand: unknown key (expected one of: mode, passCommand, passphrase), "
     "did you mean passCommand?"),
    (job(environment={"BORG_PASSPHRASE": "hunter2"}),
     f"{J}.environment.BORG_PASSPHRASE: invalid name: expected an environment variable name, not "
     "BORG_PASSPHRASE (a passphrase in host data would leak: use encryption.passCommand), got 'BORG_PASSPHRASE'"),
    # repo
    (job(repo="ftp://server/backups"), f"{J}.repo: {REPO}: only ssh:// URLs are supported, got 'ftp://server/backups'"),
    (job(repo="backups/host01"),
     f"{J}.repo: {REPO}: a relative local path or a malformed user@host:path, got 'backups/host01'"),
    (job(repo="ssh://borg@server:99999/srv"), f"{J}.repo: {REPO}: port 99999 out of range, "
                                              "got 'ssh://borg@server:99999/srv'"),
    (job(repo="ssh://borg@server"), f"{J}.repo: {REPO}: not an ssh://[user@]host[:port]/path URL, "
                                    "got 'ssh://borg@server'"),
    (job(repo="/srv/borg::host01-2024"), f"{J}.repo: {REPO}: '::' starts an archive name in borg 1.x; give the "
                                         "repository only, got '/srv/borg::host01-2024'"),
    (job(repo=None), f"{J}.repo: missing, {REPO}"),
    # our additions on a job
    (job(checks={"frequency": "30"}), f"{J}.checks.frequency: expected a duration like 12h, 30d, 2w, 1m or 1y, "
                                      "got '30'"),
    (job(checks={"verifyData": "yes"}), f"{J}.checks.verifyData: expected true or false, got 'yes'"),
    (job(postgresqlDatabases=[{"name": "app", "format": "zip"}]),
     f"{J}.postgresqlDatabases[0].format: expected one of: custom, plain, tar, got 'zip'"),
    (job(postgresqlDatabases=[{"name": "app", "format": "directory"}]),  # cannot be streamed back: not supported
     f"{J}.postgresqlDatabases[0].format: expected one of: custom, plain, tar, got 'directory'"),
    (job(postgresqlDatabases=[{"user": "app"}]), f"{J}.postgresqlDatabases[0].name: missing, expected a database "
                                                 "name (letters, digits, _ . $ -, at most 63 characters, not starting "
                                                 "with . $ -)"),
    (job(postgresqlDatabases=[{"name": "../etc"}]), f"{J}.postgresqlDatabases[0].name: expected a database name "
                                                    "(letters, digits, _ . $ -, at most 63 characters, not starting "
                                                    "with . $ -), got '../etc'"),
    (job(postgresqlDatabases=[{"name": "app", "user": "-oops"}]),
     f"{J}.postgresqlDatabases[0].user: expected a system user name (lowercase letters, digits, _ -), got '-oops'"),
    (job(postgresqlDatabases=[{"name": "app"}, {"name": "app", "format": "plain"}]),
     f"{J}.postgresqlDatabases[1]: expected a name not listed before in postgresqlDatabases, got 'app' again"),
    (job(volumes=["grafana", "grafana"]), f"{J}.volumes[1]: expected a name not listed before in volumes, got 'grafana' again"),
    (job(postgresqlDatabases=["app"]),
     f"{J}.postgresqlDatabases[0]: expected a mapping {{name, user, format}}, got 'app'"),
    (job(volumes=["my volume"]), f"{J}.volumes[0]: expected a volume name (letters, digits, _ . -), got 'my volume'"),
    ({"borgbackup": {"jobs": {"sys tem": SEED["borgbackup"]["jobs"]["system"]}}},
     "host01: borgbackup.jobs.sys tem: invalid name: expected a job name (letters, digits, _ . -), got 'sys tem'"),
    # server side
    ({"borgbackup": {"repos": {"host01": {"quota": "100GB"}}}},
     "host01: borgbackup.repos.host01.quota: expected a size like 500M, 100G or 1.5T, got '100GB'"),
    ({"borgbackup": {"repos": {"host01": {"path": "borg/host01"}}}},
     "host01: borgbackup.repos.host01.path: expected an absolute path, got 'borg/host01'"),
    ({"borgbackup": {"repos": {"host01": {"authorizedKey": []}}}},
     "host01: borgbackup.repos.host01.authorizedKey: unknown key (expected one of: path, user, group, "
     "authorizedKeys, authorizedKeysAppendOnly, allowSubRepos, quota), did you mean authorizedKeys?"),
    ({"borgbackup": {"repos": {"host01": {"authorizedKeys": [ED25519[:60]]}}}},
     f"host01: borgbackup.repos.host01.authorizedKeys[0]: {KEY}: the key data is truncated or mangled, "
     f"got '{ED25519[:60]}'"),
    ({"borgbackup": {"repos": {"host01": {"authorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5!"]}}}},
     f"host01: borgbackup.repos.host01.authorizedKeys[0]: {KEY}: the key data is not valid base64, "
     "got 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5!'"),
    ({"borgbackup": {"repos": {"host01": {"authorizedKeysAppendOnly": ['restrict,command="x" ssh-ed25519 AAAA']}}}},
     f"host01: borgbackup.repos.host01.authorizedKeysAppendOnly[0]: {KEY}: unknown key type 'restrict,command=\"x\"';"
     " give the bare key, pyinfra-backup adds the options, got 'restrict,command=\"x\" ssh-ed25519 AAAA'"),
    ({"borgbackup": {"repos": {"host01": {"allowSubRepos": "no"}}}},
     "host01: borgbackup.repos.host01.allowSubRepos: expected true or false, got 'no'"),
    ({"borgbackup": {"operatorKeys": ["ssh-ed25519 AAAAC3NzaC1yc2EAAAADAQABAAABAQ=="]}},
     f"host01: borgbackup.operatorKeys[0]: {KEY}: the key data is not of type ssh-ed25519, "
     "got 'ssh-ed25519 AAAAC3NzaC1yc2EAAAADAQABAAABAQ=='"),
    ({"borgbackup": {"lockWait": -1}}, "host01: borgbackup.lockWait: expected an integer >= 0 (seconds), got -1"),
    ({"borgbackup": {"lockWait": "60"}}, "host01: borgbackup.lockWait: expected an integer >= 0 (seconds), got '60'"),
    # other top-level keys
    (SEED | {"system_state": {"job": "sytem"}},
     "host01: system_state.job: expected a job of borgbackup.jobs (one of: system), got 'sytem', did you mean system?"),
    ({"borgbackup": {"jobs": {"system": SEED_JOB, "dbs": SEED_JOB}}, "system_state": {}},
     "host01: system_state.job: missing, expected the job whose repo keeps the state archives (one of: system, dbs)"),
    ({"system_state": {"paths": ["/etc/machine-id"]}},
     "host01: system_state.job: missing, expected the job whose repo keeps the state archives (the host has no jobs)"),
    (SEED | {"system_state": {"ageDir": ""}}, "host01: system_state.ageDir: expected a directory path, got ''"),
    (SEED | {"system_state": {"paths": ["etc/machine-id"]}},
     "host01: system_state.paths[0]: expected an absolute path, got 'etc/machine-id'"),
    (SEED | {"system_state": {"ageRecipients": ["age1nope"]}},
     "host01: system_state.ageRecipients[0]: expected an age recipient (age1...) or an ssh-ed25519/ssh-rsa public "
     "key: not a valid age recipient, got 'age1nope'"),
    (SEED | {"backup_force": "sytem"},
     "host01: backup_force: expected a job of borgbackup.jobs (one of: system), got 'sytem', did you mean system?"),
    (SEED | {"backup_force": 5},
     "host01: backup_force: expected true, false, a job name or a list of job names, got 5"),
    ({"backup_force": ["system"]},
     "host01: backup_force: expected a job of borgbackup.jobs (the host has no jobs), got 'system'"),
    (SEED | {"recover_jobs": ["system", "dbs"]},
     "host01: recover_jobs: expected a job of borgbackup.jobs (one of: system), got 'dbs'"),
    (SEED | {"recover_generation": 0},
     "host01: recover_generation: expected a NixOS generation number (an integer >= 1), got 0"),
    (SEED | {"recover_target": "restore"}, "host01: recover_target: expected an absolute path, got 'restore'"),
    (SEED | {"config_repo": {"remotes": {}}}, "host01: config_repo.path: missing, expected a non-empty string"),
    (SEED | {"config_repo": {"path": "/etc/nixos", "push_tags": "yes"}},
     "host01: config_repo.push_tags: expected true or false, got 'yes'"),
    (SEED | {"config_repo": {"path": "/etc/nixos", "remotes": {"my remote": "x"}}},
     "host01: config_repo.remotes.my remote: invalid name: expected a git remote name (letters, digits, _ . -), "
     "got 'my remote'"),
    (SEED | {"agenix": {"identity": ["~/.ssh/id_ed25519"]}},
     "host01: agenix.identity: unknown key (expected one of: rules, identities, force), did you mean identities?"),
    (SEED | {"monitoring": {"ping_url": "hc-ping.com/abc"}},
     "host01: monitoring.ping_url: expected an http:// or https:// URL, got 'hc-ping.com/abc'"),
    (SEED | {"monitoring": {"textfile_dir": "textfiles"}},
     "host01: monitoring.textfile_dir: expected an absolute path, got 'textfiles'"),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED, ids=[m.split(": ", 2)[1] for _, m in MALFORMED])
def test_malformed(data, message):
    assert errors(data) == [message]


def test_at_least_30_malformed_cases():
    assert len(MALFORMED) >= 30


@pytest.mark.parametrize("spec", ["dialy", "*-*-* 25:00:00"])
def test_bad_start_at(spec):
    expected = ("expected a systemd calendar spec (OnCalendar=, e.g. daily or Mon *-*-* 03:00): "
                f"{calendar_error(spec)}, got {spec!r}")
    assert errors(job(startAt=spec)) == [f"{J}.startAt: {expected}"]
    assert errors(job(startAt=["daily", spec])) == [f"{J}.startAt[1]: {expected}"]


def test_all_problems_reported_sorted_by_key_path():
    data = job(compression="gzip", prune={"keep": {"daily": -2}}, paths=["rel"])
    assert [line.split(": ")[1] for line in errors(data)] == [
        "borgbackup.jobs.system.compression", "borgbackup.jobs.system.paths[0]",
        "borgbackup.jobs.system.prune.keep.daily",
    ]


def test_passphrase_never_shown():
    secret = "correct horse battery staple"
    lines = errors(job(encryption={"mode": "repokey", "passCommand": "cat /p", "passphrase": secret}))
    assert lines and not any(secret in line for line in lines)


# --- require_valid_inventory -----------------------------------------------------------------------

class _Data:
    def __init__(self, data):
        self._data = data

    def dict(self):
        return self._data


class _Host:
    def __init__(self, name, data):
        self.name, self.data = name, _Data(data)


class _State:
    def __init__(self, hosts):
        self.inventory = hosts


@pytest.fixture(autouse=True)
def _validation_cache(tmp_path, monkeypatch):
    """Each test its own cache of inventories found valid."""
    from pyinfra_backup import validate

    monkeypatch.setattr(validate, "CACHE_DIR", tmp_path / "valid")
    return tmp_path / "valid"


@pytest.fixture
def validations(monkeypatch) -> list:
    """One item per run of the schema validator; the in-process memo emptied."""
    from pyinfra_backup import validate

    calls, real = [], validate._validator
    monkeypatch.setattr(validate, "_validator", lambda: calls.append(1) or real())
    monkeypatch.setattr(validate, "_SEEN", {})
    return calls


def test_require_valid_inventory_validates_every_host_once():
    bad = job(prune={"keep": {"daily": -2}})
    state = _State([_Host("host01", SEED), _Host("host02", bad), _Host("host03", job(compression="gzip"))])
    with pytest.raises(InvalidHostData) as raised:
        require_valid_inventory(state)
    assert isinstance(raised.value, PyinfraError)
    lines = str(raised.value).splitlines()
    assert lines[0] == "invalid host data (2 problems), nothing was changed:"
    assert lines[1] == f"host02: borgbackup.jobs.system.prune.keep.daily: {KEEP}, got -2"
    assert lines[2].startswith("host03: borgbackup.jobs.system.compression: ")
    state.inventory = []  # memoised: later hosts of the same run do not validate again, and still stop
    with pytest.raises(InvalidHostData):
        require_valid_inventory(state)


def test_require_valid_inventory_passes_valid_fleet():
    state = _State([_Host("host01", SEED), _Host("server", {"borgbackup": NIX_EXPORT})])
    require_valid_inventory(state)
    require_valid_inventory(state)


def test_an_inventory_found_valid_is_not_validated_again_until_its_data_or_the_code_changes(
        validations, _validation_cache, monkeypatch, tmp_path):
    from pyinfra_backup import validate

    def validated(hosts) -> int:
        """How many distinct host data the run validated."""
        before = len(validations)
        validate._SEEN.clear()  # a new pyinfra run: only the cache on disk remains
        require_valid_inventory(_State(hosts))
        return len(validations) - before

    fleet = [_Host("host01", SEED), _Host("server", {"borgbackup": NIX_EXPORT})]
    assert validated(fleet) == 2 and len(list(_validation_cache.iterdir())) == 1
    assert validated(fleet) == 0  # same data, same code: remembered
    assert validated([_Host("host01", job(compression="zstd,3")), fleet[1]]) == 2  # a changed value
    assert validated([*fleet, _Host("host02", SEED)]) == 2  # a new host (its data is host01's)
    changed_code = tmp_path / "validate.py"
    changed_code.write_text("# another version of the checks\n")
    monkeypatch.setattr(validate, "_CODE", (*validate._CODE[1:], changed_code))
    assert validated(fleet) == 2
    assert validated(fleet) == 0


def test_an_invalid_inventory_is_never_remembered(validations, _validation_cache):
    from pyinfra_backup import validate

    bad = [_Host("host01", job(prune={"keep": {"daily": -2}}))]
    for _ in range(2):
        validate._SEEN.clear()
        with pytest.raises(InvalidHostData, match="keep.daily"):
            require_valid_inventory(_State(bad))
    assert len(validations) == 2
    assert not _validation_cache.exists()


def test_an_unwritable_cache_only_costs_the_validation(validations, monkeypatch, tmp_path):
    from pyinfra_backup import validate

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(validate, "CACHE_DIR", blocker / "valid")  # under a file: mkdir fails
    for _ in range(2):
        validate._SEEN.clear()
        require_valid_inventory(_State([_Host("host01", SEED)]))
    assert len(validations) == 2


def test_require_valid_inventory_outside_pyinfra():
    with pytest.raises(RuntimeError):
        require_valid_inventory()


# --- the real pyinfra CLI ---------------------------------------------------------------------------

def _pyinfra(tmp_path, host_data) -> tuple[subprocess.CompletedProcess, Path]:
    marker = tmp_path / "marker"
    (tmp_path / "inventory.py").write_text(f"hosts = [('@local', {host_data!r})]\n")
    (tmp_path / "deploy.py").write_text(
        "from pyinfra.operations import server\n"
        "from pyinfra_backup.validate import require_valid_inventory\n"
        "require_valid_inventory()\n"
        f"server.shell(name='harmless', commands=['touch {marker}'])\n"
    )
    pyinfra = Path(sys.executable).with_name("pyinfra")
    run = subprocess.run(
        [str(pyinfra), "-y", str(tmp_path / "inventory.py"), str(tmp_path / "deploy.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ | {"NO_COLOR": "1"},
    )
    return run, marker


def test_pyinfra_run_stops_on_invalid_data(tmp_path):
    bad = job(prune={"keep": {"daily": -2}}, encryption={"mode": "repokey"})
    run, marker = _pyinfra(tmp_path, json.loads(json.dumps(bad)))
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "@local: borgbackup.jobs.system.prune.keep.daily: expected an integer >= -1 (-1 = unlimited), got -2" \
        in output
    assert f"@local: borgbackup.jobs.system.encryption.passCommand: missing, {PASS}" in output
    assert "Traceback" not in output
    assert "Beginning operation run" not in output
    assert not marker.exists()


def test_pyinfra_run_proceeds_on_valid_data(tmp_path):
    run, marker = _pyinfra(tmp_path, job(startAt=None, repo=str(tmp_path / "repo")))
    assert run.returncode == 0, run.stdout + run.stderr
    assert marker.exists()


def test_hosts_sharing_their_data_are_validated_once_and_each_named(validations):
    from pyinfra_backup import validate

    calls = validations
    bad = {"borgbackup": {"jobs": {"system": {**SEED_JOB, "prune": {"keep": {"daily": -2}}}}}}
    first = validate.host_data_errors("h1", {**bad, "ssh_hostname": "10.0.0.1", "note": {"free": 1}})
    second = validate.host_data_errors("h2", {**bad, "ssh_hostname": "10.0.0.2", "note": {"free": 2}})
    assert len(calls) == 1  # same schema keys, other keys differ only in values the schema leaves free
    assert first == [line.replace("h2:", "h1:") for line in second] and first[0].startswith("h1: borgbackup.jobs.system")
    validate.host_data_errors("h3", {**bad, "backup_force": True})  # another value of a schema key: validated
    assert len(calls) == 2


def test_backup_force_may_name_a_job_of_another_host_as_data_flags_reach_every_host():
    from pyinfra_backup.validate import inventory_errors

    class Host:
        def __init__(self, name, data):
            self.name, self.data = name, type("Data", (), {"dict": lambda _: data})()

    client = {"borgbackup": {"jobs": {"system": SEED_JOB}}, "backup_force": "system"}
    server = {"borgbackup": {"repos": {}}, "backup_force": "system"}
    assert inventory_errors([Host("host01", client), Host("backup", server)]) == []
    typo = inventory_errors([Host("host01", {**client, "backup_force": "sytem"}), Host("backup", server)])
    assert typo == ["host01: backup_force: expected a job of borgbackup.jobs (one of: system), got 'sytem', did you mean system?"]


def test_a_key_with_a_line_break_stays_on_its_problems_line():
    [line] = errors(job(environment={"BAD\nNAME": "x"}))
    assert line.startswith(f"{J}.environment.'BAD\\nNAME': invalid name: expected ")


# --- repo servers reached without strict host key checking ------------------------------------------

@pytest.mark.parametrize("setting", [
    {}, {"ssh_strict_host_key_checking": "accept-new"}, {"ssh_strict_host_key_checking": "no"},
    {"ssh_strict_host_key_checking": "off"}, {"ssh_strict_host_key_checking": "ask"},
    {"ssh_strict_host_key_checking": None}, {"ssh_strict_host_key_checking": False},
    {"ssh_strict_host_key_checking": "accept-new", "ssh_known_hosts_file": "/etc/fleet/known_hosts"},
])
def test_a_repo_server_without_strict_host_key_checking_is_a_problem(setting):
    from pyinfra_backup.validate import host_key_checking_problem

    problem = host_key_checking_problem("backup", {"borgbackup": {"repos": {}}, **setting})
    assert problem.startswith('backup: ssh_strict_host_key_checking: expected "yes" for a repo server')
    assert ("unset (pyinfra's default: accept-new" in problem) == (setting == {})
    assert f"pin it in {setting.get('ssh_known_hosts_file', '~/.ssh/known_hosts')} (ssh_known_hosts_file" in problem


def test_strict_repo_servers_and_clients_are_no_problem():
    from pyinfra_backup.validate import host_key_checking_problem

    assert host_key_checking_problem("backup", {"borgbackup": {"repos": {}}, "ssh_strict_host_key_checking": "yes"}) is None
    assert host_key_checking_problem("host01", SEED) is None  # a client: the operator's borg checks its server itself


def test_require_valid_inventory_refuses_a_repo_server_without_strict_checking_naming_what_keyscan_sees(tmp_path):
    """A real pyinfra inventory; the server's address is this machine's loopback, where nothing listens on the port."""
    import socket

    from pyinfra.api import Inventory

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    server = {"borgbackup": {"repos": {}}, "ssh_hostname": "127.0.0.1", "ssh_port": port}
    strict = {**server, "ssh_strict_host_key_checking": "yes"}
    local = {"borgbackup": {"repos": {}}}  # @local has no host key to check
    inventory = Inventory(([("host01", SEED), ("backup", server), ("@local", local)], {}))
    with pytest.raises(InvalidHostData) as raised:
        require_valid_inventory(_State(inventory))
    lines = str(raised.value).splitlines()
    assert lines[0] == "invalid host data (1 problem), nothing was changed:"
    assert lines[1].startswith("backup: ssh_strict_host_key_checking: expected \"yes\"")
    assert lines[2:] == [f"    ssh-keyscan -p {port} 127.0.0.1: no host key (nothing answered from here)"]
    require_valid_inventory(_State(Inventory(([("host01", SEED), ("backup", strict), ("@local", local)], {}))))


def test_an_operator_identity_this_machine_cannot_read_is_refused_before_any_host_changes(tmp_path):
    """Once found only when prune first had something to delete, as 'Connection closed by remote host'."""
    from pyinfra.api import Inventory

    from pyinfra_backup.validate import missing_operator_identities

    key = tmp_path / "operator_ed25519"
    job = {"paths": ["/etc"], "repo": "borg@backup:.", "prune": {"keep": {"daily": 7}},
           "encryption": {"mode": "repokey-blake2", "passCommand": "cat /run/pass"}}
    server = ("backup", {"borgbackup": {"repos": {}}})

    def problems(identity, keep=True):
        spec = job if keep else {k: v for k, v in job.items() if k != "prune"}
        client = ("host01", {"borgbackup": {"jobs": {"system": spec}, "operatorIdentity": str(identity)}})
        return missing_operator_identities(Inventory(([client, server], {})))

    assert problems(key) == [
        f"host01: borgbackup.operatorIdentity: prune of job system runs on this machine with {key}: no such file "
        "(expected the operator's private key, its public key in backup's borgbackup.operatorKeys)"]
    assert problems(key, keep=False) == []  # nothing runs with it
    key.write_text("a key\n")
    assert problems(key) == []


def test_a_keyfile_job_on_a_fleet_server_needs_escrow():
    from pyinfra_backup.validate import inventory_errors

    class Host:
        def __init__(self, name, data):
            self.name, self.data = name, type("Data", (), {"dict": lambda _: data})()

    keyfile = {**SEED_JOB, "repo": "borg@backup:.", "encryption": {"mode": "keyfile-blake2", "passCommand": "cat /p"}}
    client = {"borgbackup": {"jobs": {"system": keyfile}}}
    server = Host("backup", {"borgbackup": {"repos": {}}})
    [line] = inventory_errors([Host("host01", client), server])
    assert line.startswith("host01: borgbackup.jobs.system.encryption.mode: expected a repokey mode, or "
                           "borgbackup.escrow.recipients set, got 'keyfile-blake2' without escrow: the key of a keyfile-mode "
                           "repo exists only on host01, and if host01 is lost its archives on backup can never be decrypted")
    assert "set borgbackup.escrow.recipients" in line
    escrowed = {"borgbackup": {**client["borgbackup"], "escrow": {"recipients": [AGE]}}}
    assert inventory_errors([Host("host01", escrowed), server]) == []
    local = {**keyfile, "repo": "/var/lib/borg/local"}  # not on a fleet server: the key stays beside the repo's host
    assert inventory_errors([Host("host01", {"borgbackup": {"jobs": {"system": local}}}), server]) == []


def test_escrow_recipients_are_checked_and_unknown_escrow_keys_refused():
    assert errors({"borgbackup": {"escrow": {"recipients": ["age1nope"]}}})[0].startswith("host01: borgbackup.escrow.recipients[0]: expected an age recipient")
    assert errors({"borgbackup": {"escrow": {"recipients": []}}})[0].startswith("host01: borgbackup.escrow.recipients: ")
    assert errors({"borgbackup": {"escrow": {"recipients": [AGE], "identities": ["/k"], "x": 1}}})
