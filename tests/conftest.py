"""Shared fixtures: the namespace SSH test fleet (tests/fleet; mark tests that use it with @pytest.mark.fleet),
and the command-line options of tests/infra (collected only with --inventory)."""

import os
from pathlib import Path

import pytest

from tests.fleet import Fleet, FleetError, check_prerequisites, cleanup_leftovers, install_teardown_handlers

# git as a fresh machine has it, whatever this one was given: no identity, no global or system configuration.
# (Fleet hosts see none either: tests/fleet hides the machine's.) A test that commits or tags says who it is.
os.environ["GIT_CONFIG_GLOBAL"] = os.devnull
os.environ["GIT_CONFIG_NOSYSTEM"] = "1"

FLEET_CLIENTS = [f"host{i:02d}" for i in range(1, 6)]
FLEET_SERVER = "backup"


@pytest.fixture(scope="session")
def _fleet_session():
    """Root + tools or a loud failure (never a skip); teardown on SIGTERM/SIGINT/exit; leftovers of dead runs removed."""
    problem = None
    try:
        check_prerequisites()
    except FleetError as e:
        problem = str(e)
    if problem:
        pytest.fail(problem, pytrace=False)
    install_teardown_handlers()
    cleanup_leftovers()


@pytest.fixture(scope="session")
def fleet(_fleet_session):
    """host01..host05 (group clients) + backup (group servers), shared by the whole session."""
    f = Fleet()
    try:
        f.up(FLEET_CLIENTS + [FLEET_SERVER])
        f.groups.update(clients=list(FLEET_CLIENTS), servers=[FLEET_SERVER])
        yield f
    finally:
        f.down()


@pytest.fixture
def fleet_factory(_fleet_session):
    """make(names=(), group=None) -> a separate, started Fleet; all of them are torn down after the test."""
    made = []

    def make(names=(), group=None):
        f = Fleet()
        made.append(f)
        if names:
            f.up(names, group=group)
        return f

    yield make
    for f in made:
        f.down()


# --- tests/infra: testinfra checks of a fleet, run only against an inventory given on the command line

INFRA_DIR = Path(__file__).parent / "infra"


def pytest_addoption(parser):
    group = parser.getgroup("infra", "tests/infra: testinfra checks of the hosts of a pyinfra inventory")
    group.addoption("--inventory", metavar="PATH",
                    help="the pyinfra inventory whose hosts tests/infra checks (without it, tests/infra is not collected)")
    group.addoption("--limit", action="append", default=[], metavar="HOSTS",
                    help="tests/infra: only these hosts (names, group names or globs; comma-separated or repeated)")


def pytest_ignore_collect(collection_path, config):
    if config.getoption("inventory") is None and Path(collection_path) == INFRA_DIR:
        return True
    return None


def pytest_configure(config):
    asked = [arg for arg in config.args if _under(Path(arg.split("::")[0]).resolve(), INFRA_DIR)]
    if asked and config.getoption("inventory") is None:
        raise pytest.UsageError("tests/infra checks the hosts of a pyinfra inventory: add --inventory PATH "
                                "(e.g. pytest tests/infra --inventory inventory/example.py --limit host01)")


def _under(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents
