"""What restoring a job's database or volume compares, each read in ONE remote command:
the archive's manifest (borg extract --stdout), the thing as it is now, and our restore marker.

    host.get_fact(DatabaseRestoreState, planned=planned, archive="host01-system-...", database="shop", user="postgres")
    host.get_fact(VolumeRestoreState, planned=planned, archive="host01-system-...", volume="grafana")
    pyinfra INVENTORY fact facts.data.VolumeRestoreState planned=system archive=host01-system-... volume=grafana
"""

from __future__ import annotations

from pyinfra.api import FactBase

from facts.borg import planned_job
from pyinfra_backup.data_restore import (
    DatabaseState, VolumeState, database_sections, parse_database, parse_volume, volume_sections,
)
from pyinfra_backup.enrollment import PlannedJob
from pyinfra_backup.shell import sectioned_script


class DatabaseRestoreState(FactBase):
    """The archive's manifest, the database (oid, number of objects; None when absent) and the marker
    of our last restore of it. Example: see the module docstring."""

    def command(self, planned: PlannedJob | str, archive: str, database: str, user: str) -> str:
        return sectioned_script(database_sections(planned_job(planned), archive, database, user))

    def process(self, output) -> DatabaseState:
        return parse_database(output)


class VolumeRestoreState(FactBase):
    """The archive's manifest, the volume (engine, mountpoint, entries; None when no engine knows it),
    the engines installed and the marker of our last restore of it. Example: see the module docstring."""

    def command(self, planned: PlannedJob | str, archive: str, volume: str) -> str:
        return sectioned_script(volume_sections(planned_job(planned), archive, volume))

    def process(self, output) -> VolumeState:
        return parse_volume(output)
