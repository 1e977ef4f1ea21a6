"""Restore a job's PostgreSQL database or container volume by name, from its archive.

    pyinfra -y INVENTORY tasks.data.restore_database job=system database=shop [archive=NAME] [overwrite=true] --limit HOST
    pyinfra -y INVENTORY tasks.data.restore_volume job=system volume=grafana [archive=NAME] [overwrite=true] --limit HOST

A database is recreated from its dump (streamed out of the archive, never written to disk); an
existing database with tables, views, sequences or functions is only dropped with `overwrite=true`.
A volume is created when missing and its files extracted into its mountpoint; a non-empty volume is
only written with `overwrite=true` (files of the archive replace theirs, others stay). Restoring the
same archive again changes nothing while the database is the one restored (same oid) or the volume
still holds what was restored (same number of entries): see pyinfra_backup/data_restore.py.
"""

from __future__ import annotations

from pyinfra import host

from facts.data import DatabaseRestoreState, VolumeRestoreState
from pyinfra_backup.data_restore import RESTORE_SAYS, restore_database_command, restore_volume_command
from pyinfra_backup.dumps import DataSpec
from tasks.borg import archive_to_restore
from tasks.common import HostError, explained, host_operation


def _check_manifest(job: str, archive: str, kind: str, name: str, state) -> None:
    """The archive must hold the database or volume: said before anything about the host's side."""
    if state.manifest_error:
        raise HostError(f"{host.name}: job {job}: archive {archive}: {state.manifest_error}")
    held = (state.manifest.databases if kind == "database" else state.manifest.volumes) if state.manifest else {}
    if name not in held:
        listed = ", ".join(sorted(held)) or "none"
        raise HostError(f"{host.name}: job {job}: archive {archive} holds no {kind} {name!r} ({kind}s in it: {listed})")


@host_operation
def restore_database(job: str, database: str, archive: str = "latest", overwrite: bool = False, user: str | None = None):
    """Recreate PostgreSQL database `database` from the job's archive (default: its latest), as `user`
    (default: the job's entry for it, else postgres).

    Example: `pyinfra INVENTORY tasks.data.restore_database job=system database=shop --limit host01`.
    """
    name = str(database)  # pyinfra's CLI makes a number of "123"
    planned, archive = archive_to_restore(job, archive)
    configured = {db.name: db.user for db in DataSpec.of_host(job, host.data).databases}
    user = user or configured.get(name, "postgres")
    state = host.get_fact(DatabaseRestoreState, planned=planned, archive=archive, database=name, user=user)
    _check_manifest(job, archive, "database", name, state)
    if state.error:
        raise HostError(f"{host.name}: job {job}: database {name}: {state.error}")
    if state.oid and state.restored == (archive, state.oid):
        host.noop(f"{job}: database {name} already restored from {archive}")
        return
    if state.objects and not overwrite:
        raise HostError(
            f"{host.name}: job {job}: database {name} exists and is not empty ({state.objects} tables, views, "
            "sequences or functions): refusing to replace it; pass overwrite=true to drop and recreate it"
        )
    aside = f"pbk-replaced-{state.oid}" if state.oid is not None else None  # the existing one, until the restore worked
    yield explained(restore_database_command(planned, archive, state.manifest, name, user, aside), RESTORE_SAYS)


@host_operation
def restore_volume(job: str, volume: str, archive: str = "latest", overwrite: bool = False):
    """Restore `volume`'s files from the job's archive (default: its latest) into the volume,
    created (with the engine that had it, podman or docker) when missing.

    Example: `pyinfra INVENTORY tasks.data.restore_volume job=system volume=grafana --limit host01`.
    """
    name = str(volume)
    planned, archive = archive_to_restore(job, archive)
    state = host.get_fact(VolumeRestoreState, planned=planned, archive=archive, volume=name)
    _check_manifest(job, archive, "volume", name, state)
    if state.error:
        raise HostError(f"{host.name}: job {job}: volume {name}: {state.error}")
    if state.engine and state.restored == (archive, str(state.entries)):
        host.noop(f"{job}: volume {name} already restored from {archive}")
        return
    if state.entries and not overwrite:
        raise HostError(
            f"{host.name}: job {job}: volume {name} is not empty ({state.entries} entries in {state.mountpoint}): "
            "refusing to overwrite; pass overwrite=true to replace its files with the archive's"
        )
    engine = state.engine or _engine_for(job, name, state)
    yield restore_volume_command(planned, archive, state.manifest, name, engine, create=state.engine is None)


def _engine_for(job: str, name: str, state) -> str:
    """The engine to create a missing volume with: the one that had it, else one installed."""
    recorded = state.manifest.volumes[name].get("engine")
    if recorded in state.engines:
        return recorded
    if not state.engines:
        raise HostError(f"{host.name}: job {job}: volume {name}: neither podman nor docker is installed")
    return state.engines[0]
