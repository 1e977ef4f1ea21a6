"""The restore drill: extract a sample of an archive's files and compare them with the live files.

`newest_archive` picks the archive to drill from the repo's listing (the one the run already read).
`drill_script` builds ONE shell script run on the backup client (where the job's borg runs, with the
job's environment and passCommand). It lists the archive's regular files, takes a deterministic
pseudo-random sample bounded by a file count and a byte budget (seeded by the archive name: the
same archive gives the same sample, each new archive another one), extracts the sample into a
fresh 0700 scratch directory under `DRILL_DIR` (removed on exit, whatever happens), and
compares each file with the live one by SHA-256.
A live file whose size or mtime differs from the archived one (or that is gone) changed since
the backup: skipped, not a failure. Live files are only read. The only write outside the
scratch directory is the drill's record (`record`: `last-drill` in the job's records, see
pyinfra_backup/records.py).

The script prints `::drill:: KIND VALUE` lines; `parse_drill` turns them into a `DrillReport`.

>>> report = parse_drill(["::drill:: archive h-system-2026-11-27T12:00:00", "::drill:: files 40 0",
...                       "::drill:: selected 2 10", "::drill:: mismatch srv/a", "::drill:: compared 2",
...                       "::drill:: end"])
>>> report.failed, report.mismatched
(True, ['srv/a'])
"""

from __future__ import annotations

import fnmatch
import os
import shlex
from dataclasses import dataclass, field

from pyinfra_backup.borg import STATE_DIR, Archive, Job, Location, RepoListing, borg_env
from pyinfra_backup.shell import atomic_record, sh_join

DRILL_DIR = f"{STATE_DIR}/drill"
MARK = "::drill::"
STALE_MINUTES = 720  # scratch directories of a drill killed with SIGKILL are removed by a later drill
SKIPS = {"changed": "changed since the archive", "gone": "gone from the host", "unreadable": "unreadable on the host"}
FAILURES = {"mismatch": "differ from the archive although size and mtime match",
            "unextracted": "listed in the archive but not extracted"}

# `borg list --format '{type} {size} {path}{NUL}'` with newlines turned into \001 (and NULs into
# newlines), so that a path with a newline stays on one line and is left out of the sample.
_REGULAR = r"""$1 == "-" { p = substr($0, length($1) + length($2) + 3)
  if (index(p, "\001")) { odd++; next }
  n++; print $2 " " p }
END { print n + 0, odd + 0 > counts }"""
# After the shuffle: the first files that fit, up to `n` files and `b` bytes.
_BUDGET = r"""{ s = $1 + 0; if (k < n && s <= b - t) { k++; t += s; print } if (k >= n) exit }"""
# Comparing the sample in a constant number of processes, whatever its size: `stat` and `sha256sum` of every
# sampled path at once, live (from /) and extracted (from the scratch copy), joined by path in awk (paths
# with a newline are never sampled). Inputs, in this order, each after `kind=`: ls (live stat), cs (copy
# stat), then, for phase=report only, lh / ch (live / copy sums), l2 (live stat after hashing); then
# names (the sample). phase=select prints the paths worth hashing: regular files on both sides with the
# same size and mtime. phase=report prints the verdict of each path that is not simply equal.
_JOIN = r"""function named() { return substr($0, length($1) + length($2) + length($3) + 4) }
function info() { return $1 " " $2 " " substr($3, 1, 1) }
function regular(v) { return substr(v, length(v)) == "-" }
function say(kind, p) { if (phase == "report") print "::drill:: " kind " " p }
kind == "ls" { ls[named()] = info(); next }
kind == "cs" { cs[named()] = info(); next }
kind == "l2" { l2[named()] = info(); next }
kind == "lh" { lh[substr($0, 67)] = substr($0, 1, 64); next }
kind == "ch" { ch[substr($0, 67)] = substr($0, 1, 64); next }
{ p = $0
  if (!(p in cs) || !regular(cs[p])) { say("unextracted", p); bad = 1; next }
  if (!(p in ls) || !regular(ls[p])) { say("gone", p); next }
  if (ls[p] != cs[p]) { say("changed", p); next }
  if (phase == "select") { print p; next }
  if (!(p in lh)) { say("unreadable", p); next }
  if (l2[p] != ls[p]) { say("changed", p); next }
  compared++
  if (lh[p] != ch[p]) { say("mismatch", p); bad = 1 } }
END { if (phase == "report") { print "::drill:: compared " compared + 0; print bad + 0, compared + 0 > verdict } }"""
_STAT = "xargs -0 -r stat -c '%s %.9Y %A %n' -- < \"$_s/names0\" > \"$_s/{0}\" 2> /dev/null"
_SUM = "xargs -0 -r sha256sum -z -- < \"$_s/hash0\" 2> /dev/null | tr '\\000' '\\n' > \"$_s/{0}\""
_COMPARE = "\n".join([
    f"( cd / && {_STAT.format('ls')} ); ( cd \"$_s/x\" && {_STAT.format('cs')} )",
    f"LC_ALL=C awk -v phase=select {shlex.quote(_JOIN)} kind=ls \"$_s/ls\" kind=cs \"$_s/cs\" kind=names \"$_s/names\" "
    "| tr '\\n' '\\000' > \"$_s/hash0\"",
    f"( cd / && {_SUM.format('lh')}; {_STAT.format('l2')} ); ( cd \"$_s/x\" && {_SUM.format('ch')} )",
    f"LC_ALL=C awk -v phase=report -v verdict=\"$_s/verdict\" {shlex.quote(_JOIN)} kind=ls \"$_s/ls\" kind=cs \"$_s/cs\" "
    "kind=lh \"$_s/lh\" kind=ch \"$_s/ch\" kind=l2 \"$_s/l2\" kind=names \"$_s/names\"",
    "read -r _bad _c < \"$_s/verdict\"",
])


def newest_archive(listing: RepoListing, glob: str) -> Archive | None:
    """The newest archive (not a checkpoint) whose name matches `glob`, as borg's --glob-archives
    would match it (archive names hold no `/`)."""
    found = [a for a in listing.archives if fnmatch.fnmatchcase(a.name, glob) and not a.is_checkpoint]
    return max(found, key=lambda a: a.time, default=None)


def drill_script(job: Job, location: Location, archive: str, files: int, max_bytes: int, record: str,
                 lock_wait: int | None = None, scratch_dir: str = DRILL_DIR) -> str:
    """The drill of one archive, as one script.

    >>> job = Job.from_data("system", {"repo": "/srv/repo", "paths": ["/etc"], "encryption": {"mode": "none"}})
    >>> "_at=/srv/repo::h-system-2026-11-27T12:00:00" in drill_script(
    ...     job, Location("/srv/repo"), "h-system-2026-11-27T12:00:00", 32, 1 << 20, "/tmp/rec/last-drill")
    True
    """
    borg = ["borg", *job.extra_args]
    wait = ["--lock-wait", str(lock_wait)] if lock_wait is not None else []
    env = " ".join(f"{key}={shlex.quote(str(value))}" for key, value in borg_env(job, location).items())
    scratch = f"{scratch_dir}/{job.name}"
    return "\n".join([
        "umask 077",
        f"export {env}",
        f"_a={shlex.quote(archive)}; _at={shlex.quote(f'{location.url}::{archive}')}",
        f"_say() {{ printf '{MARK} %s %s\\n' \"$1\" \"$2\"; }}",
        "_record() { " + atomic_record(record, 'echo "$(date +%s) $1"; echo "$2"') + "; }",
        # the reason borg gives: its last line before a traceback, else its last line (xargs' own left out)
        "_fail() { _r=$(awk '/^Traceback/ { exit } /^xargs: / { next } NF { l = $0 } END { print l }' \"$_s/err\" "
        "2>/dev/null); "
        "_say error \"$1: ${_r:-no reason given}\"; _record 2 \"$1: $_r\"; exit 2; }",
        f"install -d -m 0700 {sh_join([scratch_dir])} || exit 2",
        f"find {sh_join([scratch_dir])} -mindepth 1 -maxdepth 1 -name {shlex.quote(job.name + '.*')} "
        f"-mmin +{STALE_MINUTES} -exec rm -rf {{}} +",
        f"_s=$(mktemp -d {sh_join([scratch])}.XXXXXX) || exit 2",
        "trap 'cd / && rm -rf \"$_s\"' EXIT; trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM",
        "_say archive \"$_a\"",
        "yes \"$_a\" 2>/dev/null | head -c 65536 > \"$_s/seed\"",
        f"{{ {sh_join([*borg, 'list', *wait, '--format', '{type} {size} {path}{NUL}'])} \"$_at\" "
        "2> \"$_s/err\"; echo $? > \"$_s/rc\"; } "
        f"| tr '\\n\\000' '\\001\\n' | LC_ALL=C awk -v counts=\"$_s/counts\" {shlex.quote(_REGULAR)} "
        "| LC_ALL=C sort -R --random-source=\"$_s/seed\" -k2 "
        f"| LC_ALL=C awk -v n={int(files)} -v b={int(max_bytes)} {shlex.quote(_BUDGET)} > \"$_s/sample\"",
        "[ \"$(cat \"$_s/rc\")\" -le 1 ] || _fail 'cannot list the archive'",
        "_say files \"$(cat \"$_s/counts\")\"",
        "_say selected \"$(wc -l < \"$_s/sample\") $(awk '{ t += $1 } END { print t + 0 }' \"$_s/sample\")\"",
        "sed 's/^[^ ]* //' \"$_s/sample\" > \"$_s/names\" && tr '\\n' '\\000' < \"$_s/names\" > \"$_s/names0\"",
        # pf: (a set lookup in borg, whatever the archive's size); borg 1.2 then warns "Include pattern
        # never matched" (exit status 1) although it extracted them: each file's presence is checked below.
        # xargs: one borg run unless the paths need more than 1 MiB of arguments; 255 stops it (exit 124).
        "sed 's/^/pf:/' \"$_s/names\" | tr '\\n' '\\000' > \"$_s/pf0\" && mkdir \"$_s/x\"",
        f"( cd \"$_s/x\" && xargs -0 -r -s 1048576 sh -c '\"$@\" || [ $? -eq 1 ] || exit 255' sh "
        f"{sh_join([*borg, 'extract', *wait, '--numeric-ids'])} \"$_at\" < \"$_s/pf0\" ) 2> \"$_s/err\" "
        "|| _fail 'cannot extract the sample'",
        _COMPARE,
        "[ \"$_c\" -gt 0 ] || _bad=2  # no file compared: nothing verified",
        "_record \"$_bad\" \"$_a: $_c files compared\"",
        "_say end",
    ])


@dataclass
class DrillReport:
    """What a drill found. `compared` counts the files whose hashes were compared."""

    archive: str | None = None
    files: int = 0  # regular files in the archive
    odd_names: int = 0  # left out of the sample: a newline in the name
    selected: int = 0
    selected_bytes: int = 0
    compared: int = 0
    found: dict[str, list[str]] = field(default_factory=dict)  # kind (SKIPS, FAILURES) -> paths
    error: str | None = None
    complete: bool = False

    @property
    def mismatched(self) -> list[str]:
        return self.found.get("mismatch", [])

    @property
    def failed(self) -> bool:
        nothing_compared = self.compared == 0  # a drill that compared no file verified nothing
        return bool(self.error or not self.complete or nothing_compared or any(self.found.get(kind) for kind in FAILURES))

    def summary(self, limit: int = 10) -> str:
        """One line: what was compared, what failed and what was skipped, naming the paths."""
        if self.error or not self.complete:
            return f"drill failed: {self.error or 'the drill stopped before its end'}"
        parts = [f"drill of {self.archive}: {self.compared} of {self.selected} sampled files compared "
                 f"({self.selected_bytes} bytes, {self.files} regular files in the archive)"]
        if self.compared == 0:
            parts[0] = ("drill failed: no file compared, nothing verified (" + parts[0]
                        + "; the sample must hold a file unchanged since the archive, within checks.drillMaxBytes)")
        for kind, words in [*FAILURES.items(), *SKIPS.items()]:
            paths = self.found.get(kind)
            if paths:
                shown = ", ".join("/" + path for path in paths[:limit])  # archive paths are relative to /
                shown += f" and {len(paths) - limit} more" if len(paths) > limit else ""
                what = "skipped, " if kind in SKIPS else ""
                parts.append(f"{len(paths)} {what}{words}: {shown}")
        if self.odd_names:
            parts.append(f"{self.odd_names} files with a newline in the name never sampled")
        return "; ".join(parts)


def _numbers(text: str, count: int) -> list[int]:
    words = text.split()
    return [int(word) if word.isdigit() else 0 for word in (words + ["0"] * count)[:count]]


def parse_drill(lines) -> DrillReport:
    """The report from the output lines of `drill_script`."""
    report = DrillReport()
    for line in lines:
        if not line.startswith(MARK + " "):
            continue
        kind, _, value = line[len(MARK) + 1:].partition(" ")
        if kind == "archive":
            report.archive = value
        elif kind == "files":
            report.files, report.odd_names = _numbers(value, 2)
        elif kind == "selected":
            report.selected, report.selected_bytes = _numbers(value, 2)
        elif kind == "compared":
            report.compared = _numbers(value, 1)[0]
        elif kind == "error":
            report.error = value
        elif kind == "end":
            report.complete = True
        elif kind in SKIPS or kind in FAILURES:
            report.found.setdefault(kind, []).append(value)
    return report
