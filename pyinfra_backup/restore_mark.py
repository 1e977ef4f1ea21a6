"""What a restore leaves behind to know, next time, whether it still holds: the archive it restored and a
stamp of the restored files as the restore left them.

A restore into a target is done again only when the archive differs or a restored file changed since
(content, size, mtime, ctime, inode, type, or a file gone or added under a restored path): a file broken
again after an in-place restore (`target=/ paths=/etc/motd`) is put back by the next restore, not taken
for "already restored". Pure: shell text only.

>>> restored_roots("/", ("etc/motd",), ("/etc", "/home"))
('/etc/motd',)
>>> restored_roots("/srv/restore", (), ("/etc", "/home"))
('/srv/restore/etc', '/srv/restore/home')
"""

from __future__ import annotations

import posixpath

from pyinfra_backup.borg import STATE_DIR
from pyinfra_backup.shell import atomic_record, sh_join


def restored_roots(target: str, paths: tuple[str, ...], job_paths: tuple[str, ...]) -> tuple[str, ...]:
    """Where the restored files are: each archive path restored (or, for a whole archive, each of the
    job's paths) under the target; the target itself when the job names no path."""
    inside = paths or tuple(p.lstrip("/") for p in job_paths if p.lstrip("/"))
    return tuple(posixpath.join(target, p) for p in inside) or (target,)


def files_stamp(roots: tuple[str, ...]) -> str:
    """A command printing one digest of every file, directory and link under `roots` as they are now
    (path, type, size, mtime, ctime, inode; a missing root adds nothing; our own state directory is
    left out, since the restore's mark lives there)."""
    listing = (f"find {sh_join(list(roots))} -path {sh_join([STATE_DIR])} -prune "
               r"-o -printf '%p\t%y\t%s\t%T@\t%C@\t%i\n'")
    return f"{{ {listing} 2>/dev/null; true; }} | LC_ALL=C sort | sha256sum | cut -d' ' -f1"


def write_mark(mark: str, archive: str, roots: tuple[str, ...]) -> str:
    """A command writing the mark (archive name, then the stamp of the restored files) atomically."""
    return atomic_record(mark, f"printf '%s\\n' {sh_join([archive])} && {files_stamp(roots)}")


def parse_mark(text: str | None) -> tuple[str | None, str | None]:
    """(archive, stamp) of a mark's text; a mark of an older version holds the archive only.

    >>> parse_mark("host01-system-2026-12-08T01:25:11\\nab12\\n")
    ('host01-system-2026-12-08T01:25:11', 'ab12')
    >>> parse_mark(None)
    (None, None)
    """
    lines = (text or "").strip().splitlines()
    return (lines[0].strip() if lines else None), (lines[1].strip() if len(lines) > 1 else None)
