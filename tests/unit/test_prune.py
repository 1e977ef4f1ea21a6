"""Our prune decision must match borg's own, archive for archive (borg prune --dry-run --list)."""

import os
import random
import re
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from pyinfra_backup.borg import Archive, RepoListing, archive_glob, keep_argv, parse_interval
from pyinfra_backup.prune import to_prune

ENV = {**os.environ, "TZ": "UTC", "BORG_PASSPHRASE": "", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def borg(*argv, cwd):
    return subprocess.run(["borg", *argv], cwd=cwd, env=ENV, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A real repo with 24 archives of job `h-sys` spread over 500 days, a checkpoint, and
    archives of another job and of the state archive that prune must never touch."""
    root = tmp_path_factory.mktemp("prune")
    (root / "f").write_text("x")
    borg("init", "-e", "none", "r", cwd=root)
    rng = random.Random(7)
    times = sorted({NOW - timedelta(hours=rng.randint(1, 500 * 24)) for _ in range(24)})
    names = [f"h-sys-{t:%Y-%m-%dT%H:%M:%S}" for t in times]
    names.append(f"h-sys-{times[-1] + timedelta(minutes=5):%Y-%m-%dT%H:%M:%S}.checkpoint")
    names += [f"h-sys-state-{times[0]:%Y-%m-%dT%H:%M:%S}", f"h-sys-2-{times[1]:%Y-%m-%dT%H:%M:%S}"]
    for name in names:
        stamp = re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", name).group(0)
        borg("create", "--timestamp", stamp, f"r::{name}", "f", cwd=root)
    return root


def listed(repo):
    import json

    data = json.loads(borg("list", "--json", "--consider-checkpoints", "r", cwd=repo).stdout)
    return [Archive(a["name"], datetime.fromisoformat(a["start"]).replace(tzinfo=timezone.utc)) for a in data["archives"]]


KEEPS = [
    {"daily": 7, "weekly": 4, "monthly": 6},
    {"within": "10d"},
    {"within": "2w", "monthly": -1},
    {"hourly": 3, "yearly": 1},
    {"daily": 100},
    {"weekly": 0, "monthly": 2},
    {"secondly": 5, "minutely": 2},
]


@pytest.mark.parametrize("keep", KEEPS, ids=[str(k) for k in KEEPS])
def test_matches_borg_prune_dry_run(repo, keep):
    out = borg("prune", "--dry-run", "--list", "--glob-archives", archive_glob("h-sys"), *keep_argv(keep), "r", cwd=repo)
    borg_would = {line.split()[2] for line in out.stderr.splitlines() if line.startswith("Would prune:")}
    mine = RepoListing(exists=True, archives=tuple(listed(repo))).job_archives("h-sys", checkpoints=True)
    ours = {a.name for a in to_prune(mine, keep, NOW)}
    assert ours == borg_would
    assert not any("state" in name or name.startswith("h-sys-2-") for name in ours)


def test_nothing_to_prune_when_every_archive_is_kept():
    archives = [Archive(f"a{i}", NOW - timedelta(days=i)) for i in range(3)]
    assert to_prune(archives, {"daily": 7}, NOW) == []


def test_within_units_follow_borg():
    hours = lambda spec: parse_interval(spec).total_seconds() / 3600  # noqa: E731
    assert hours("12H") == 12 and hours("2d") == 48 and hours("1w") == 168
    assert hours("1m") == 24 * 31 and hours("1y") == 24 * 365
    with pytest.raises(ValueError, match="not a duration"):
        parse_interval("30")
