"""Restores relayed by the operator's machine: borg runs there, the host unpacks a tar stream.

A host being rebuilt has no backup key and cannot run its passCommand yet (its secrets decrypt
only once its identity is back). The operator's machine has the full-access key and the
passphrase: it runs `borg export-tar ARCHIVE -` and pipes the stream over the host's SSH
connection into `stage_script`, which only stages it (and the sha256 of what it received). borg 1.2
does not always close the stream on an error and tar exits 0 on a stream cut at a file boundary, so
only once borg exited 0 and both ends saw the same digest does `commit_script` move aside every file
it would replace (nothing is lost) and copy the staged files into place with owners and modes;
otherwise `discard_script` removes the stage and nothing in place changed:

    name = pick_archive(listing, "web01-system", "state")   # web01-system-state-2026-11-27T10:00:00
    argv = export_tar_argv(job, url, name, ("etc/ssh",))    # pyinfra_backup/borg.py
    stage = f"{RELAY_DIR}/stage.ab12cd"                      # then commit_script(stage, sha256, "/", name, marker)
"""

from __future__ import annotations

from pyinfra_backup.borg import STATE_DIR, RepoListing
from pyinfra_backup.shell import atomic_record, sh_join

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


def stage_script(stage: str) -> str:
    """The host's first phase: a tar stream on stdin unpacked into `stage` (a new 0700 directory under
    RELAY_DIR) with numeric owners and modes, its members listed and the sha256 of the bytes received
    computed on the way; prints `staged <sha256>`. Nothing outside `stage` changes; on failure the
    stage is removed. Stages a killed relay left behind are removed after 12 h."""
    return "\n".join([
        "set -eu",
        f"relay={sh_join([RELAY_DIR])}; stage={sh_join([stage])}",
        'mkdir -p -m 0700 "$relay"',
        "find \"$relay\" -mindepth 1 -maxdepth 1 -name 'stage.*' -mmin +720 -exec rm -rf {} +",
        "mkdir -m 0700 \"$stage\"; trap 'rm -rf \"$stage\"' EXIT; mkdir \"$stage/root\"; mkfifo \"$stage/stream\"",
        'sha256sum < "$stage/stream" > "$stage/sha256" & summing=$!',
        # The archive's members as tar names them: the directories tar made for their parents are not
        # members, and must not overwrite the target's own. tar may stop before the stream's end: the
        # rest is read anyway, so that the digest covers every byte sent.
        'tee "$stage/stream" | { status=0; tar -x -p --numeric-owner -v --quoting-style=literal -f - -C "$stage/root" '
        '> "$stage/members" || status=$?; cat > /dev/null; exit $status; }',
        'wait "$summing"',
        'trap - EXIT; echo "staged $(cut -d" " -f1 "$stage/sha256")"',
    ])


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


def commit_script(stage: str, sha256: str, target: str, archive: str, marker: str) -> str:
    """The host's second phase, run only once the operator's borg exited 0 and the stream it sent has
    the digest the host staged: the staged files go into `target`. A file of the target that differs
    from the archive's is first moved to `REPLACED_DIR/<archive>/` (same relative path); identical files
    stay. Then `marker` records the archive restored into the target (atomically). The host checks the
    digest itself too: another one changes nothing. The stage is removed either way."""
    aside = f"{REPLACED_DIR}/{archive}"
    return "\n".join([
        "set -eu",
        f"stage={sh_join([stage])}; expected={sh_join([sha256])}",
        f"target={sh_join([target])}; aside={sh_join([aside])}; marker={sh_join([marker])}",
        "trap 'rm -rf \"$stage\"' EXIT",
        'got=$(cut -d" " -f1 "$stage/sha256")',
        '[ "$got" = "$expected" ] || { echo "the staged stream (sha256 $got) is not the one the operator sent '
        '(sha256 $expected): nothing restored" >&2; exit 1; }',
        'mkdir -p "$target" && cd "$stage/root"',
        f"export target aside; find . -mindepth 1 ! -type d -exec sh -c {sh_join([_REPLACE_ASIDE])} sh {{}} +",
        'tar -c --no-recursion --verbatim-files-from -T "$stage/members" -f - | tar -x -p --numeric-owner -f - -C "$target"',
        atomic_record(marker, f"echo {sh_join([archive])}"),
    ])


def discard_script(stage: str) -> str:
    """Remove a stage whose stream the operator did not vouch for (borg failed, or another digest)."""
    return f"rm -rf {sh_join([stage])}"
