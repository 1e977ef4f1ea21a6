"""The config repo pushed from a fleet host to two real bare repos on two other fleet hosts over SSH.

host03 holds the repo (as the operator's machine would) with its own deploy key and the two servers'
host keys pinned in its own known_hosts file (and no global one); host04 (`origin`) and host05
(`mirror`) each serve a bare repo as user `git`. The tests run in file order on one setup, and check
the remotes directly (git on host04/host05), not through our own facts. A diverged remote is
in tests/faults.
"""

from __future__ import annotations

import pytest

from tests.integration.helpers import pyinfra

pytestmark = pytest.mark.fleet

PUSHER = "host03"
REMOTES = {"origin": "host04", "mirror": "host05"}
REPO = "/srv/config"
BARE = "/srv/git/config.git"
KEY = "/root/.ssh/config_repo"
PINNED = "/root/.ssh/config_repo_known_hosts"
SSH = (f"ssh -i {KEY} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes "
       f"-o UserKnownHostsFile={PINNED} -o GlobalKnownHostsFile=/dev/null")
GIT = f"git -C {REPO} -c user.name=Operator -c user.email=op@example.org"

SERVER_SETUP = f"""
set -e
id git >/dev/null 2>&1 || useradd --system --create-home --home-dir /srv/git --shell /bin/sh --password '*' git
rm -rf {BARE} && runuser -u git -- git init -q --bare -b main {BARE}
install -d -m 0700 -o git -g git /srv/git/.ssh
install -m 0600 -o git -g git /dev/stdin /srv/git/.ssh/authorized_keys
"""
PUSHER_SETUP = f"""
set -e
rm -rf {REPO} {KEY} {KEY}.pub
ssh-keygen -q -t ed25519 -N '' -C config-repo@{PUSHER} -f {KEY}
git init -q -b main {REPO}
git -C {REPO} config user.name Operator && git -C {REPO} config user.email op@example.org  # tags need a tagger
echo '{{ }}' > {REPO}/configuration.nix
git -C {REPO} add -A && {GIT} commit -q -m 'first'
git -C {REPO} branch stable
git -C {REPO} remote add origin git@{REMOTES['origin']}:/srv/git/wrong.git
"""


def remote_rev(fleet, name: str, rev: str) -> str:
    out = fleet.run(REMOTES[name], f"runuser -u git -- git -C {BARE} rev-parse -q --verify {rev}", check=False)
    return out.stdout.strip()


def local_rev(fleet, rev: str) -> str:
    return fleet.run(PUSHER, f"git -C {REPO} rev-parse {rev}").stdout.strip()


@pytest.fixture(scope="module")
def setup(fleet, tmp_path_factory):
    return config_repo_setup(fleet, tmp_path_factory.mktemp("config-repo"))


def config_repo_setup(fleet, tmp) -> dict:
    """host03's config repo with two remotes (bare repos on host04 and host05), pushed once."""
    fleet.run(PUSHER, PUSHER_SETUP)
    key = fleet.run(PUSHER, f"cat {KEY}.pub").stdout
    for host in REMOTES.values():
        fleet.run(host, SERVER_SETUP, input=key)
    pinned = "".join(f"{host} {fleet.host_key(host)}\n" for host in REMOTES.values())
    fleet.run(PUSHER, f"cat > {PINNED}", input=pinned)
    data = {"config_repo": {
        "path": REPO,
        "remotes": {name: f"git@{host}:{BARE}" for name, host in REMOTES.items()},
        "branches": ["main", "stable"],
        "ssh_command": SSH,
    }}
    inventory = fleet.write_inventory(tmp / "inventory.py", {PUSHER: data})
    return {"fleet": fleet, "inventory": inventory,
            "first": pyinfra(inventory, "deploys/config_repo.py", "--limit", PUSHER)}


def deploy(setup, *args):
    return pyinfra(setup["inventory"], "deploys/config_repo.py", "--limit", PUSHER, *args)


def test_first_run_sets_the_remotes_and_pushes_both_branches_to_both(setup):
    fleet, run = setup["fleet"], setup["first"]
    assert run.returncode == 0, run.stdout
    for name, host in REMOTES.items():
        url = fleet.run(PUSHER, f"git -C {REPO} config --get-all remote.{name}.url").stdout
        assert url == f"git@{host}:{BARE}\n"  # origin's wrong URL was replaced
        for branch in ("main", "stable"):
            assert remote_rev(fleet, name, f"refs/heads/{branch}") == local_rev(fleet, branch)
    # the push went by name, so the remote-tracking refs follow
    assert local_rev(setup["fleet"], "refs/remotes/mirror/main") == local_rev(fleet, "main")


def test_rerun_changes_nothing_in_one_remote_command(setup):
    fleet = setup["fleet"]
    before = fleet.exec_count(PUSHER)
    run = deploy(setup, "-v")
    assert run.returncode == 0, run.stdout
    assert "] Success" not in run.stdout and "No changes" in run.stdout
    assert "in sync: origin: main" in run.stdout, run.stdout
    assert fleet.exec_count(PUSHER) - before == 1  # the one fact: repo, remotes and both ls-remotes


RELEASE_DEPLOY = """\
# The user's two commands after a release was tagged, plus the two things a tag must never do,
# in ONE pyinfra run (each run costs a second or more).
from pyinfra import local
from tasks import git

git.release_tag("v1.0.0", "Release 1.0.0", name="Tag again: same commit")
local.include("deploys/config_repo.py")
git.release_tag("v1.0.0", "Release 1.0.0", ref="HEAD~1", name="Tag again: another commit")
"""


def test_a_new_commit_and_a_release_tag_reach_both(setup, tmp_path):
    fleet, inventory = setup["fleet"], setup["inventory"]
    fleet.run(PUSHER, f"echo '{{ services.openssh.enable = true; }}' > {REPO}/configuration.nix && "
                      f"{GIT} commit -q -am 'ssh'")
    tag = pyinfra(inventory, "tasks.git.release_tag", "v1.0.0", "Release 1.0.0", "--limit", PUSHER)
    assert tag.returncode == 0, tag.stdout
    assert fleet.run(PUSHER, f"git -C {REPO} cat-file -t v1.0.0").stdout.strip() == "tag"
    assert local_rev(fleet, "v1.0.0^{commit}") == local_rev(fleet, "main")

    deploy_file = tmp_path / "release.py"
    deploy_file.write_text(RELEASE_DEPLOY)
    run = pyinfra(inventory, str(deploy_file), "--limit", PUSHER, "-v")
    steps = run.stdout.split("--> Starting operation: ")
    again = next(step for step in steps if step.startswith("Tag again: same commit"))
    assert "exists on HEAD" in again and "No changes" in again, run.stdout
    moved = next(step for step in steps if step.startswith("Tag again: another commit"))
    assert "tags are never moved" in moved and run.returncode != 0, run.stdout
    assert local_rev(fleet, "v1.0.0^{commit}") == local_rev(fleet, "main")
    for name in REMOTES:
        assert remote_rev(fleet, name, "refs/heads/main") == local_rev(fleet, "main")
        assert remote_rev(fleet, name, "refs/tags/v1.0.0") == local_rev(fleet, "refs/tags/v1.0.0")  # the tag object
