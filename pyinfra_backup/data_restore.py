"""Restoring a job's PostgreSQL databases and container volumes from its archive (see dumps.py).

What the restore operations read (one script each, `facts/data.py`) and the commands they run.
A dump streams out of the archive into `pg_restore --create` (or `psql` for plain dumps): no
plaintext dump touches the disk. A volume's files are extracted into its current mountpoint.
Each successful restore leaves a marker, `/var/lib/pyinfra-backup/restores/<kind>/<job>/<name>`:

    postgresql   "<archive> <database oid>"   restored already while the database is that one
    volume       "<archive> <entries>"        restored already while the volume has that many entries

>>> database_marker("system", "shop")
'/var/lib/pyinfra-backup/restores/postgresql/system/shop'
>>> parse_marker("host01-system-2026-11-27T12:00:00 16384")
('host01-system-2026-11-27T12:00:00', '16384')
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from pyinfra_backup.borg import borg_env, extract_argv
from pyinfra_backup.dumps import MANIFEST, RESTORES_DIR, VOLUME_LOOKUP, Manifest, in_archive, spool_dir
from pyinfra_backup.enrollment import PlannedJob
from pyinfra_backup.jsonable import JsonFact
from pyinfra_backup.shell import Section, atomic_record, parse_sections, sh_join, with_env

MISSING = 3  # exit status of a section whose thing (database, volume) does not exist: not an error

# Objects of a database outside PostgreSQL's own schemas: tables, views, sequences, functions...
OBJECTS_SQL = (
    "select (select count(*) from pg_class c join pg_namespace s on s.oid = c.relnamespace"
    " where c.relkind in ('r', 'p', 'v', 'm', 'S', 'f') and s.nspname <> 'information_schema'"
    " and s.nspname not like 'pg\\_%')"
    " + (select count(*) from pg_proc p join pg_namespace s on s.oid = p.pronamespace"
    " where s.nspname <> 'information_schema' and s.nspname not like 'pg\\_%')"
)
OID_SQL = "select oid from pg_database where datname = :'n'"


def database_marker(job: str, name: str) -> str:
    return f"{RESTORES_DIR}/postgresql/{job}/{name}"


def volume_marker(job: str, name: str) -> str:
    return f"{RESTORES_DIR}/volume/{job}/{name}"


def parse_marker(text: str | None) -> tuple[str, str] | None:
    words = (text or "").split()
    return (words[0], words[1]) if len(words) == 2 else None


def _extract(planned: PlannedJob, archive: str, path: str, options: tuple[str, ...]) -> str:
    argv = extract_argv(planned.job, planned.location.url, archive, (path,), options)
    return with_env(borg_env(planned.job, planned.location), argv)


def manifest_command(planned: PlannedJob, archive: str) -> str:
    """The archive's manifest.json on stdout (borg exits 1, "never matched", when it has none)."""
    return _extract(planned, archive, in_archive(f"{spool_dir(planned.job.name)}/{MANIFEST}"), ("--stdout",))


def _psql(user: str, name: str, database: str, sql: str) -> str:
    """Run `sql` (with :'n' standing for `name`, quoted by psql) in `database`, unaligned output."""
    psql = ["runuser", "-u", user, "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-v", f"n={name}", "-d", database]
    return f"printf '%s\\n' {shlex.quote(sql)} | {sh_join(psql)}"


def database_sections(planned: PlannedJob, archive: str, name: str, user: str) -> dict[str, str]:
    """manifest; database: "<oid> <objects>" (exit MISSING when absent); marker."""
    oid = _psql(user, name, "postgres", OID_SQL)
    objects = _psql(user, name, name, OBJECTS_SQL)
    return {
        "manifest": manifest_command(planned, archive),
        "database": f'_oid=$({oid}) || exit 2; [ -n "$_oid" ] || exit {MISSING}; '
                    f'_n=$({objects}) || exit 2; echo "$_oid $_n"',
        "marker": f"cat {sh_join([database_marker(planned.job.name, name)])}",
    }


def volume_sections(planned: PlannedJob, archive: str, name: str) -> dict[str, str]:
    """manifest; volume: "<engine> <mountpoint>" then its entry count (exit MISSING when no
    engine knows it); engines installed; marker."""
    q = shlex.quote(name)
    return {
        "manifest": manifest_command(planned, archive),
        "volume": f'{VOLUME_LOOKUP}\n_r=$(_volume {q}) || {{ echo "$_r" >&2; exit {MISSING}; }}; '
                  'echo "$_r"; ls -A "${_r#* }" | wc -l',
        "engines": "for _e in podman docker; do command -v $_e >/dev/null 2>&1 && echo $_e; done; true",
        "marker": f"cat {sh_join([volume_marker(planned.job.name, name)])}",
    }


@dataclass(frozen=True)
class DatabaseState(JsonFact):
    manifest: Manifest | None
    oid: str | None  # None: no such database
    objects: int
    restored: tuple[str, str] | None  # marker: (archive, oid)
    manifest_error: str | None = None  # why the archive's manifest could not be read
    error: str | None = None  # why the server could not be queried


@dataclass(frozen=True)
class VolumeState(JsonFact):
    manifest: Manifest | None
    engine: str | None  # None: no engine knows the volume
    mountpoint: str | None
    entries: int
    engines: tuple[str, ...]
    restored: tuple[str, str] | None  # marker: (archive, entries)
    manifest_error: str | None = None
    error: str | None = None  # why the volume could not be looked up


def _manifest(section: Section) -> tuple[Manifest | None, str | None]:
    if section.rc == 0 and section.text.strip():
        try:
            return Manifest.parse(section.text), None
        except (ValueError, KeyError, TypeError, AttributeError) as error:  # json.JSONDecodeError is a ValueError
            return None, f"invalid manifest.json: {error}; nothing was restored"
    if section.rc == 1 and "never matched" in "\n".join(section.stderr):
        return None, None  # an archive made without databases or volumes
    return None, f"cannot read the archive's manifest: {section.error}"


def parse_database(lines) -> DatabaseState:
    sections = parse_sections(lines)
    manifest, manifest_error = _manifest(sections["manifest"])
    database = sections["database"]
    oid, objects, error = None, 0, None
    if database.ok:
        oid, count = database.text.split()
        objects = int(count)
    elif database.rc != MISSING:
        error = f"cannot query PostgreSQL: {database.error}"
    marker = sections["marker"]
    return DatabaseState(manifest, oid, objects, parse_marker(marker.text if marker.ok else None),
                         manifest_error, error)


def parse_volume(lines) -> VolumeState:
    sections = parse_sections(lines)
    manifest, manifest_error = _manifest(sections["manifest"])
    volume = sections["volume"]
    engine = mountpoint = error = None
    entries = 0
    if volume.ok:
        engine, mountpoint = volume.stdout[0].split(" ", 1)
        entries = int(volume.stdout[1])
    elif volume.rc != MISSING:
        error = f"cannot look up the volume: {volume.error}"
    marker = sections["marker"]
    engines = tuple(line for line in sections["engines"].stdout if line)
    return VolumeState(manifest, engine, mountpoint, entries, engines,
                       parse_marker(marker.text if marker.ok else None), manifest_error, error)


def _record(marker: str, value: str) -> str:
    """Write the marker (`value` is a shell word, evaluated when the command runs)."""
    return atomic_record(marker, f"printf '%s\\n' {value}")


# The roles of `pg_dumpall --globals-only` that the cluster lacks (the names it has, as quote_ident
# writes them, in `have`, one a line): their CREATE/ALTER/COMMENT ON ROLE lines and the memberships
# granted to them. Roles that exist are left as they are; tablespaces are not in the dump.
_MISSING_ROLES = r"""function ident(s,   i) { if (substr(s, 1, 1) == "\"") { i = index(substr(s, 2), "\""); return substr(s, 1, i + 1) }
  match(s, /^[^ ;]+/); return substr(s, 1, RLENGTH) }
BEGIN { n = split(have, h, "\n"); for (i = 1; i <= n; i++) exists[h[i]] = 1 }
/^SET / { print; next }
/^CREATE ROLE / { r = ident(substr($0, 13)); if (!(r in exists)) { made[r] = 1; print } next }
/^ALTER ROLE / { if (ident(substr($0, 12)) in made) print; next }
/^COMMENT ON ROLE / { if (ident(substr($0, 17)) in made) print; next }
/^GRANT / { i = index($0, " TO "); if (i && ident(substr($0, i + 4)) in made) print; next }"""


def _roles_command(planned: PlannedJob, archive: str, manifest: Manifest, user: str) -> list[str]:
    """Create the roles of the archive's cluster that this cluster lacks, before the database (whose
    dump names its owner and grantees but does not create them)."""
    path = manifest.globals_path()
    if path is None:  # an archive made before roles were dumped
        return []
    # terse: an error names the statement's problem, never the statement (its password hash) itself
    psql = ["runuser", "-u", user, "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=terse", "-d", "postgres"]
    extract = _extract(planned, archive, path, ("--stdout",))
    return [
        f"_have=$(printf '%s\\n' 'select quote_ident(rolname) from pg_roles' | {sh_join(psql)}) || exit 2",
        f'{{ {extract}; echo $? > "$_st"; }} | LC_ALL=C awk -v have="$_have" {shlex.quote(_MISSING_ROLES)} '
        f'| {sh_join(psql)} > /dev/null; _rc=$?; _b=$(cat "$_st")',
        '[ "$_b" = 0 ] || { echo "borg extract of the roles failed (exit $_b): nothing was changed" >&2; exit 2; }',
        '[ "$_rc" = 0 ] || { echo "creating the missing roles failed (exit $_rc): the database was not touched" >&2; exit 2; }',
    ]


RESTORE_SAYS = ("restoring database", "borg extract", "creating the missing roles")  # its own explanations
TERMINATE_SQL = "select pg_terminate_backend(pid) from pg_stat_activity where datname = :'n' and pid <> pg_backend_pid();"
ASIDE_SQL = 'alter database :"n" rename to :"o";'
PUT_BACK_SQL = 'drop database if exists :"n" with (force);', 'alter database :"o" rename to :"n";'
DROP_ASIDE_SQL = 'drop database :"o" with (force);'


def restore_database_command(planned: PlannedJob, archive: str, manifest: Manifest, name: str, user: str,
                             aside: str | None = None) -> str:
    """The roles the cluster lacks created, then the dump streamed out of the archive into a recreated
    database, then the marker. With `aside` (the database exists), it is first renamed to `aside` (its
    sessions ended) and dropped only once the restore succeeded; when the stream or the restore
    fails, the partial database is dropped and the existing one renamed back, untouched."""
    entry = manifest.databases[name]
    run = ["runuser", "-u", user, "--"]
    if entry["format"] == "plain":  # made with --create: it creates the database and connects to it
        loader = sh_join([*run, "psql", "-Xq", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]) + " > /dev/null"
    else:
        loader = sh_join([*run, "pg_restore", "--create", "--exit-on-error", "--dbname=postgres"])
    extract = _extract(planned, archive, manifest.dump_path(name), ("--stdout",))
    psql = sh_join([*run, "psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-v", f"n={name}", "-v", f"o={aside}", "-d", "postgres"])

    def sql(*statements: str) -> str:
        return f"printf '%s\\n' {sh_join(statements)} | {psql} > /dev/null"

    failed = shlex.quote(f"restoring database {name} failed" + (
        f"; the existing database is back as it was" if aside else "; it may be partly restored") + ":")
    lost = shlex.quote(f"restoring database {name} failed, and putting the existing one back too: it is {aside}")
    steps = ['_st=$(mktemp) || exit 2', "trap 'rm -f \"$_st\"' EXIT", *_roles_command(planned, archive, manifest, user)]
    if aside:  # renamed, not dropped: a failed stream must leave the existing database as it was
        steps.append(f"{sql(TERMINATE_SQL, ASIDE_SQL)} || exit 2")
    steps += [
        f'{{ {extract}; echo $? > "$_st"; }} | {loader}; _rc=$?; _b=$(cat "$_st")',
        'if [ "$_b" != 0 ] || [ "$_rc" != 0 ]; then',
        *([f"  {sql(*PUT_BACK_SQL)} || {{ echo {lost} >&2; exit 2; }}"] if aside else []),
        f'  [ "$_b" = 0 ] || {{ echo {failed} "borg extract failed (exit $_b)" >&2; exit 2; }}',
        f'  echo {failed} "exit $_rc" >&2; exit 2',
        "fi",
        *([f"{sql(DROP_ASIDE_SQL)} || exit 2"] if aside else []),
        f"_oid=$({_psql(user, name, 'postgres', OID_SQL)}) || exit 2",
        _record(database_marker(planned.job.name, name), f"{shlex.quote(archive)}\" $_oid\""),
    ]
    return "\n".join(steps)


def restore_volume_command(planned: PlannedJob, archive: str, manifest: Manifest, name: str, engine: str,
                           create: bool) -> str:
    """Extract the volume's files from the archive into its mountpoint (`create`: make the volume
    first), give the mountpoint its recorded owner and mode, then record the marker."""
    entry = manifest.volumes[name]
    path = in_archive(entry["mountpoint"])
    inspect = sh_join([engine, "volume", "inspect", "--format", "{{.Mountpoint}}", name])
    extract = _extract(planned, archive, path, ("--strip-components", str(len(path.split("/")))))
    steps = [sh_join([engine, "volume", "create", name]) + " > /dev/null || exit 2"] if create else []
    steps += [
        f"_mp=$({inspect}) && cd \"$_mp\" || exit 2",
        f"{extract} || exit 2",
        f"chown {entry['uid']}:{entry['gid']} . && chmod {shlex.quote(entry['mode'])} . || exit 2",
        '_n=$(ls -A | wc -l)',
        _record(volume_marker(planned.job.name, name), f"{shlex.quote(archive)}\" $_n\""),
    ]
    return "\n".join(steps)
