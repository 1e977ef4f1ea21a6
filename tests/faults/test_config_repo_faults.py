"""Scenario 7 (issue 8): a diverged git remote is not forced, it is reported; no git ref is lost.

The config repo of tests/integration/test_config_repo_fleet.py (host03 pushing to bare repos on host04
and host05), set up on the fault suite's own fleet. It ends with `git fsck` clean on every repo
involved and every ref that existed before still there, unchanged or fast-forwarded.
"""

from __future__ import annotations

import pytest

from tests.integration.test_config_repo_fleet import (
    BARE, GIT, PUSHER, REMOTES, REPO, config_repo_setup, deploy, local_rev, remote_rev,
)

pytestmark = pytest.mark.fleet

# (host, git command prefix) of every repo involved: the pusher's, then each remote's bare repo.
REPOS = [(PUSHER, f"git -C {REPO}"), *((host, f"runuser -u git -- git -C {BARE}") for host in REMOTES.values())]


@pytest.fixture(scope="module")
def setup(faults, tmp_path_factory):
    made = config_repo_setup(faults.fleet, tmp_path_factory.mktemp("config-repo-faults"))
    assert made["first"].returncode == 0, made["first"].stdout
    return made


def refs(fleet) -> dict[tuple[str, str], str]:
    """(host, ref) -> object id, for every ref of every repo involved."""
    found = {}
    for host, git in REPOS:
        for line in fleet.run(host, f"{git} for-each-ref --format='%(refname) %(objectname)'").stdout.splitlines():
            ref, oid = line.split()
            found[(host, ref)] = oid
    return found


def assert_refs_kept(fleet, before: dict[tuple[str, str], str]) -> None:
    after = refs(fleet)
    for host, git in REPOS:
        fsck = fleet.run(host, f"{git} fsck --no-dangling", check=False)
        assert fsck.returncode == 0, f"{host}: git fsck: {fsck.stderr}"
    for (host, ref), old in before.items():
        assert (host, ref) in after, f"{host}: {ref} was lost"
        new = after[(host, ref)]
        git = dict(REPOS)[host]
        assert new == old or fleet.run(host, f"{git} merge-base --is-ancestor {old} {new}", check=False).returncode == 0, \
            f"{host}: {ref} moved from {old} to {new}, not a fast-forward"


def test_7_a_diverged_remote_is_named_and_left_alone_while_the_other_is_pushed(faults, setup):
    fleet = faults.fleet
    theirs_setup = (f"rm -rf /tmp/other && runuser -u git -- sh -c 'git clone -q {BARE} /tmp/other && "
                    f"cd /tmp/other && echo theirs > theirs.txt && git add theirs.txt && "
                    f"git -c user.name=Other -c user.email=o@x commit -q -m theirs && git push -q origin main'")
    fleet.run(REMOTES["mirror"], theirs_setup)
    theirs = remote_rev(fleet, "mirror", "refs/heads/main")
    fleet.run(PUSHER, f"echo ours > {REPO}/ours.txt && git -C {REPO} add ours.txt && {GIT} commit -q -m ours")
    ours = local_rev(fleet, "main")
    before = refs(fleet)

    run = deploy(setup)  # mirror's commit is unknown on host03: fetched into refs/remotes/mirror/main, then counted
    assert run.returncode != 0, run.stdout
    assert "remote mirror: branch main: diverged: local 1 ahead, 1 behind" in run.stdout, run.stdout
    assert "never forced" in run.stdout and "remote origin" not in run.stdout
    assert remote_rev(fleet, "origin", "refs/heads/main") == ours  # the other remote got the push
    assert remote_rev(fleet, "mirror", "refs/heads/main") == theirs  # nothing forced
    assert remote_rev(fleet, "mirror", "refs/heads/stable") == local_rev(fleet, "stable")
    assert local_rev(fleet, "refs/remotes/mirror/main") == theirs and local_rev(fleet, "main") == ours

    executed = fleet.exec_count(PUSHER)
    again = deploy(setup)  # now counted in the one fact, nothing to push or fetch
    assert again.returncode != 0 and "remote mirror: branch main: diverged: local 1 ahead, 1 behind" in again.stdout
    assert fleet.exec_count(PUSHER) - executed == 1, again.stdout
    assert remote_rev(fleet, "mirror", "refs/heads/main") == theirs
    assert_refs_kept(fleet, before)
