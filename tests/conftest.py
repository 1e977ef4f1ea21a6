"""Shared fixtures: the namespace SSH test fleet (tests/fleet). Mark tests that use it with @pytest.mark.fleet."""

import pytest

from tests.fleet import Fleet, FleetError, check_prerequisites, cleanup_leftovers, install_teardown_handlers

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
