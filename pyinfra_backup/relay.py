"""Restores relayed by the operator's machine: borg runs there, the host unpacks a tar stream.

A host being rebuilt has no backup key and cannot run its passCommand yet (its secrets decrypt
only once its identity is back). The operator's machine has the full-access key and the
passphrase: it runs `borg export-tar ARCHIVE -` and pipes the stream over the host's SSH
connection into `unpack_script`, which stages it, moves aside every file it would replace
(nothing is lost) and copies the rest into place with owners and modes:

    name = pick_archive(listing, "web01-system", "state")   # web01-system-state-2026-11-27T10:00:00
    argv = export_tar_argv(job, url, name, ("etc/ssh",))    # pyinfra_backup/borg.py
    script = unpack_script("/", archive=name, marker=".../restores/ab12")
"""

from __future__ import annotations

from pyinfra_backup.borg import STATE_DIR, RepoListing
from pyinfra_backup.shell import sh_join

RELAY_DIR = f"{STATE_DIR}/relay"      # staging, on the host (same filesystem as /var/lib)
REPLACED_DIR = f"{STATE_DIR}/replaced"  # files a relayed restore replaced, by archive


def pick_archive(listing: RepoListing, base_name: str, archive: str) -> str:
    """`latest` (the job's newest archive), `state` (its newest state archive) or a name in the repo.
    ValueError says what the repo holds instead."""
    if archive in ("latest", "state"):
        found = listing.job_archives(base_name) if archive == "latest" else listing.state_archives(base_name)
        if not found:
            names = ", ".join(a.name for a in listing.archives[-5:]) or "none"
            kind = "archive" if archive == "latest" else "state archive"
            raise ValueError(f"no {kind} named {base_name}-{'state-' * (archive == 'state')}<timestamp> "
                             f"(the repo's newest: {names}); pass archive=NAME")
        return found[-1].name
    if archive not in {a.name for a in listing.archives}:
        raise ValueError(f"no archive {archive!r} in the repo")
    return archive


_REPLACE_ASIDE = r"""
for f; do
  rel=${f#./}; dest="${target%/}/$rel"
  if [ -e "$dest" ] || [ -L "$dest" ]; then
    if [ -f "$f" ] && [ ! -L "$f" ] && [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$f" "$dest"; then continue; fi
    if [ -L "$f" ] && [ -L "$dest" ] && [ "$(readlink "$f")" = "$(readlink "$dest")" ]; then continue; fi
    mkdir -p "$aside/$(dirname "$rel")" && mv "$dest" "$aside/$rel" && echo "replaced $dest (kept in $aside/$rel)"
  fi
done
"""


def unpack_script(target: str, archive: str, marker: str) -> str:
    """The host's side: a tar stream on stdin unpacked into `target` with numeric owners and modes.
    A file of the target that differs from the archive's is first moved to
    `REPLACED_DIR/<archive>/` (same relative path); identical files stay. Then `marker` records
    the archive restored into the target. Exits non-zero, changing nothing, on a broken stream."""
    aside = f"{REPLACED_DIR}/{archive}"
    return "\n".join([
        "set -eu",
        f"target={sh_join([target])}; aside={sh_join([aside])}; marker={sh_join([marker])}",
        f"relay={sh_join([RELAY_DIR])}; mkdir -p -m 0700 \"$relay\" && mkdir -p \"$target\"",
        "stage=$(mktemp -d \"$relay/stage.XXXXXX\"); trap 'rm -rf \"$stage\"' EXIT; mkdir \"$stage/root\"",
        # The archive's members as tar names them: the directories tar made for their parents are
        # not members, and must not overwrite the target's own (nor the staging dir, "/" itself).
        'tar -x -p --numeric-owner -v --quoting-style=literal -f - -C "$stage/root" > "$stage/members"',
        'cd "$stage/root"',
        f"export target aside; find . -mindepth 1 ! -type d -exec sh -c {sh_join([_REPLACE_ASIDE])} sh {{}} +",
        'tar -c --no-recursion --verbatim-files-from -T "$stage/members" -f - | tar -x -p --numeric-owner -f - -C "$target"',
        f'mkdir -p "$(dirname "$marker")" && echo {sh_join([archive])} > "$marker"',
    ])
