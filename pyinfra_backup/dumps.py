"""PostgreSQL dumps and container volumes in a job's archive: the shell around `borg create`.

A job with `postgresqlDatabases` or `volumes` runs its `borg create` inside one subshell that
first fills a spool, `/var/lib/pyinfra-backup/spool/<job>` (0700 root, emptied first: a killed
earlier run may have left one, removed on exit by a trap):

    postgresql/<name>.<ext>   `runuser -u <user> -- pg_dump --format=<format> <name>` (root writes the file;
                              custom dumps uncompressed, so that borg dedups them: see `_dump`)
    manifest.json             what a restore needs: each database's user, format and file; each
                              volume's engine (podman or docker), mountpoint, owner and mode

Each volume's mountpoint is looked up at run time (`podman volume inspect`, else `docker volume
inspect`) and given to borg as an extra path. A failing dump or an unknown volume stops the
subshell with a line naming it *before* borg runs: no archive is made and the existing ones are
untouched. Dumps go to a spool rather than through named pipes (`--read-special`) because borg
reading a pipe cannot tell a dump that died half-way from a finished one: the archive would be
made with a truncated dump, and an append-only key cannot really take it back.

>>> spec = DataSpec.from_data("system", {"postgresqlDatabases": [{"name": "shop"}], "volumes": ["grafana"]})
>>> spec.databases[0].file, spec.volumes
('postgresql/shop.dump', ('grafana',))
>>> "pg_dump --format=custom --compress=0 shop" in create_script(spec, "borg create R::a /etc")
True
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from collections.abc import Mapping

from pyinfra_backup.borg import STATE_DIR
from pyinfra_backup.shell import sh_join

SPOOL_DIR = f"{STATE_DIR}/spool"
RESTORES_DIR = f"{STATE_DIR}/restores"
MANIFEST = "manifest.json"
GLOBALS_FILE = "postgresql/globals.sql"  # the cluster's roles (`pg_dumpall --globals-only`): a dump has none
EXTENSIONS = {"custom": "dump", "tar": "tar", "plain": "sql"}  # the formats pg_restore/psql read from a pipe
ENGINES = ("podman", "docker")

# `_volume NAME` prints "<engine> <mountpoint>" of the first engine that knows the volume, or why none does
# (exit 1). Shared by the create script and the restore facts.
VOLUME_LOOKUP = r"""_volume() {
  _why=""
  for _engine in podman docker; do
    command -v "$_engine" >/dev/null 2>&1 || continue
    if _mp=$("$_engine" volume inspect --format '{{.Mountpoint}}' "$1" 2>/dev/null); then
      printf '%s %s\n' "$_engine" "$_mp"; return 0
    fi
    _why="$_why${_why:+; }$_engine: $("$_engine" volume inspect "$1" 2>&1 >/dev/null | tail -n 1)"
  done
  printf '%s\n' "${_why:-neither podman nor docker is installed}"; return 1
}"""


@dataclass(frozen=True)
class Database:
    """One `postgresqlDatabases` entry; `file` is the dump's path inside the spool."""

    name: str
    user: str = "postgres"
    format: str = "custom"

    @property
    def file(self) -> str:
        return f"postgresql/{self.name}.{EXTENSIONS[self.format]}"


@dataclass(frozen=True)
class DataSpec:
    """A job's databases and volumes (empty when it has none: then `borg create` runs as is)."""

    job: str
    databases: tuple[Database, ...] = ()
    volumes: tuple[str, ...] = ()

    @classmethod
    def from_data(cls, job: str, data: Mapping) -> "DataSpec":
        databases = tuple(
            Database(entry["name"], entry.get("user") or "postgres", entry.get("format") or "custom")
            for entry in data.get("postgresqlDatabases") or ()
        )
        return cls(job, databases, tuple(data.get("volumes") or ()))

    @classmethod
    def of_host(cls, job: str, host_data: Mapping) -> "DataSpec":
        """The spec of `borgbackup.jobs.<job>` in a host's data."""
        jobs = (host_data.get("borgbackup") or {}).get("jobs") or {}
        return cls.from_data(job, jobs.get(job) or {})

    def __bool__(self) -> bool:
        return bool(self.databases or self.volumes)

    @property
    def spool(self) -> str:
        return spool_dir(self.job)


def spool_dir(job: str) -> str:
    return f"{SPOOL_DIR}/{job}"


def in_archive(path: str) -> str:
    """How borg names an absolute path inside an archive."""
    return path.lstrip("/")


def _dump(db: Database) -> str:
    options = {
        "plain": ["--create"],  # the archive formats carry the database themselves
        # pg_dump compresses custom dumps with zlib by default: then a few changed rows change the whole
        # dump and borg stores all of it again; uncompressed, borg dedups it and compresses it itself.
        "custom": ["--compress=0"],
    }.get(db.format, [])
    argv = ["runuser", "-u", db.user, "--", "pg_dump", f"--format={db.format}", *options, db.name]
    what = shlex.quote(f"postgresql database {db.name} (as {db.user}): pg_dump failed:")
    return (
        f'{sh_join(argv)} > "$_s"/{shlex.quote(db.file)} 2> "$_s/.err" '
        f'|| _fail {what} "$(tr -s \'\\n\\t\' \'  \' < "$_s/.err" | cut -c 1-500)"; cat "$_s/.err" >&2'
    )


def _globals(user: str) -> str:
    """The cluster's roles and their memberships, for a restore onto a cluster that lacks them (a
    database's dump names its owner but does not create it). Without superuser rights pg_dumpall
    cannot read role passwords: then the roles are dumped without them."""
    dump = ["runuser", "-u", user, "--", "pg_dumpall", "--globals-only", "--no-tablespaces"]
    out = f'> "$_s"/{shlex.quote(GLOBALS_FILE)} 2> "$_s/.err"'
    what = shlex.quote(f"postgresql roles (as {user}): pg_dumpall --globals-only failed:")
    return (f"{sh_join(dump)} {out} || {sh_join([*dump, '--no-role-passwords'])} {out} "
            f'|| _fail {what} "$(tr -s \'\\n\\t\' \'  \' < "$_s/.err" | cut -c 1-500)"')


def _volume(name: str) -> str:
    q = shlex.quote(name)
    key = json.dumps(name)
    return "\n".join([
        f'_r=$(_volume {q}) || _fail {shlex.quote(f"volume {name}: not found:")} "$_r"',
        '_engine=${_r%% *}; _mp=${_r#* }',
        f'case "$_mp" in /*) ;; *) _fail {shlex.quote(f"volume {name}: not an absolute mountpoint:")} "$_mp";; esac',
        f'case "$_mp" in *[\\"\\\\]*|*"$_nl"*) _fail {shlex.quote(f"volume {name}: unsupported characters in its mountpoint:")} "$_mp";; esac',
        f'[ -d "$_mp" ] || _fail {shlex.quote(f"volume {name}: its mountpoint is not a directory:")} "$_mp"',
        '_stat=$(stat -c \'"uid": %u, "gid": %g, "mode": "%a"\' "$_mp") || _fail "cannot stat $_mp"',
        f'_vols="$_vols${{_vols:+, }}"{shlex.quote(key)}\': {{"engine": "\'"$_engine"\'", "mountpoint": "\'"$_mp"\'", \'"$_stat"}}',
        'set -- "$@" "$_mp"',
    ])


def _manifest_head(spec: DataSpec) -> str:
    databases = {db.name: {"user": db.user, "format": db.format, "file": db.file} for db in spec.databases}
    roles = {"globals": {"user": spec.databases[0].user, "file": GLOBALS_FILE}} if spec.databases else {}
    head = json.dumps({"version": 1, "job": spec.job, "spool": spec.spool, **roles, "databases": databases})
    return head[:-1] + ', "volumes": {'


def create_script(spec: DataSpec, borg_create: str) -> str:
    """`borg_create` (a command line ending with its paths) wrapped: spool filled, volumes looked up,
    borg run with the spool and the mountpoints as extra paths, spool removed. One subshell:
    `records.create_command` captures its stdout (borg's JSON) and stderr as it does for borg alone."""
    spool = shlex.quote(spec.spool)
    lines = [
        "umask 077",
        f"_s={spool}",
        "_nl='\n'",
        "_fail() { printf '%s\\n' \"$*\" >&2; exit 2; }",
        "trap 'rm -rf \"$_s\"' EXIT",
        "trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM",
        'rm -rf "$_s" && mkdir -p "$_s/postgresql" && chmod 0700 "$_s" || _fail "cannot make the spool $_s"',
        *([VOLUME_LOOKUP] if spec.volumes else []),
        "set --",
        '_vols=""',
        *(_dump(db) for db in spec.databases),
        *([_globals(spec.databases[0].user)] if spec.databases else []),
        *(_volume(name) for name in spec.volumes),
        'rm -f "$_s/.err"',
        f"printf '%s%s}}}}\\n' {shlex.quote(_manifest_head(spec))} \"$_vols\" > \"$_s/{MANIFEST}\"",
        f'{borg_create} "$_s" "$@"',
    ]
    return "(\n" + "\n".join(lines) + "\n)"


@dataclass(frozen=True)
class Manifest:
    """`manifest.json` of an archive: what it holds of the job's databases and volumes."""

    spool: str
    databases: Mapping[str, Mapping]  # name -> {user, format, file}
    volumes: Mapping[str, Mapping]  # name -> {engine, mountpoint, uid, gid, mode}
    globals: Mapping | None = None  # {user, file}: the cluster's roles; None in archives made before them

    @classmethod
    def parse(cls, text: str) -> "Manifest":
        """The manifest, its volumes' owner and mode checked before anything uses them (they reach
        `chown`/`chmod` on the host): a `ValueError` names the field otherwise."""
        data = json.loads(text)
        volumes = data.get("volumes") or {}
        for name, entry in volumes.items():
            for key in ("uid", "gid"):
                value = entry.get(key)
                if type(value) is not int or value < 0:  # bool is not an id either
                    raise ValueError(f"volumes.{name}.{key}: expected a non-negative integer, got {value!r}")
            if not re.fullmatch(r"[0-7]{1,4}", str(entry.get("mode"))):
                raise ValueError(f"volumes.{name}.mode: expected an octal mode, got {entry.get('mode')!r}")
        return cls(data["spool"], data.get("databases") or {}, volumes, data.get("globals"))

    def globals_path(self) -> str | None:
        """The roles' dump inside the archive, when it has one."""
        return in_archive(f"{self.spool}/{self.globals['file']}") if self.globals else None

    def dump_path(self, name: str) -> str:
        """The database's dump inside the archive."""
        return in_archive(f"{self.spool}/{self.databases[name]['file']}")
