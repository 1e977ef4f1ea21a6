"""Shell quoting and one-round-trip scripts made of named sections.

A fact that must read several things from a host in ONE remote command runs a
script of sections; each section prints a marker, its stdout, its stderr and
its exit status, and the script as a whole always exits 0 (so an absent repo
or a failing borg never fails the fact, it is reported in the section).

>>> script = sectioned_script({"who": "id -un", "oops": "false"})
>>> parsed = parse_sections(["::pbk:: who", "root", "::pbk:: who stderr", "::pbk:: who rc 0"])
>>> parsed["who"].stdout, parsed["who"].rc
(['root'], 0)
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from collections.abc import Iterable, Mapping

MARK = "::pbk::"


def sh_join(argv: Iterable[str]) -> str:
    """Quote every word: `sh_join(["borg", "list", "a b"])` -> `borg list 'a b'`."""
    return " ".join(shlex.quote(str(word)) for word in argv)


def with_env(env: Mapping[str, str], argv: Iterable[str]) -> str:
    """A command line with environment assignments before it, every value quoted.

    >>> with_env({"TZ": "UTC"}, ["borg", "list"])
    'TZ=UTC borg list'
    """
    assignments = [f"{key}={shlex.quote(str(value))}" for key, value in env.items()]
    return " ".join([*assignments, sh_join(argv)])


@dataclass(frozen=True)
class ReadFile:
    """A section that prints a file's content with shell builtins only (no process is started),
    failing (rc 1) when the file, or `only_if`, is absent. Most sections of our facts are reads
    of small files: on a fleet sharing CPUs, every process a fact starts counts."""

    path: str
    only_if: str | None = None

    def script(self, name: str) -> str:
        tests = [f"[ -f {shlex.quote(self.path)} ]", f"[ -r {shlex.quote(self.path)} ]"]
        if self.only_if:
            tests.insert(0, f"[ -e {shlex.quote(self.only_if)} ]")
        return (
            f"echo {shlex.quote(f'{MARK} {name}')}; "
            f"if {' && '.join(tests)}; then _pbk_read {shlex.quote(self.path)}; _rc=0; else _rc=1; fi; "
            f"echo {shlex.quote(f'{MARK} {name} stderr')}; echo {shlex.quote(f'{MARK} {name} rc')} $_rc"
        )


@dataclass(frozen=True)
class Inline:
    """A section run in a subshell without a stderr capture (no temp file, no process besides its
    own commands): its stdout is the section, its exit status the rc; its stderr is discarded."""

    text: str

    def script(self, name: str) -> str:
        return (f"echo {shlex.quote(f'{MARK} {name}')}; ( {self.text} ) 2>/dev/null; _rc=$?; "
                f"echo {shlex.quote(f'{MARK} {name} stderr')}; echo {shlex.quote(f'{MARK} {name} rc')} $_rc")


_READ_FUNCTION = """_pbk_read() { while IFS= read -r _l || [ -n "$_l" ]; do printf '%s\\n' "$_l"; done < "$1"; }"""


def sectioned_script(sections: Mapping[str, str | ReadFile | Inline], stop_on_failure: bool = False) -> str:
    """One POSIX sh script running each command (or `ReadFile`, `Inline`) and printing it as a named section;
    with `stop_on_failure`, the commands after a failed one do not run (and are absent from the output)."""
    commands = {name: c for name, c in sections.items() if isinstance(c, str)}
    parts = ['_e=$(mktemp)'] if commands else []
    if any(isinstance(c, ReadFile) for c in sections.values()):
        parts.append(_READ_FUNCTION)
    for name, command in sections.items():
        if not isinstance(command, str):
            parts.append(command.script(name))
            continue
        label = shlex.quote(f"{MARK} {name}")
        parts.append(
            f"echo {label}; ( {command} ) 2>\"$_e\"; _rc=$?; "
            f"echo {shlex.quote(f'{MARK} {name} stderr')}; cat \"$_e\"; "
            f"echo {shlex.quote(f'{MARK} {name} rc')} $_rc"
            + ('; [ $_rc -eq 0 ] || { rm -f "$_e"; exit 0; }' if stop_on_failure else "")
        )
    parts.append('rm -f "$_e"; exit 0' if commands else "exit 0")
    return "; ".join(parts)


@dataclass
class Section:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    rc: int | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def text(self) -> str:
        return "\n".join(self.stdout)

    @property
    def error(self) -> str:
        """The last meaningful stderr line (borg prints its reason last)."""
        lines = [line.strip() for line in self.stderr if line.strip()]
        return lines[-1] if lines else f"exit status {self.rc}"


def parse_sections(lines: Iterable[str]) -> dict[str, Section]:
    """Split the output of `sectioned_script` back into sections by name."""
    sections: dict[str, Section] = {}
    current: list[str] | None = None
    for line in lines:
        cut = line.find(MARK + " ")
        if cut > 0:  # a section's output without a final newline: its last line, then the next marker
            if current is not None:
                current.append(line[:cut])
            line = line[cut:]
        if line.startswith(MARK + " "):
            words = line[len(MARK) + 1 :].split(" ")
            section = sections.setdefault(words[0], Section())
            if len(words) == 1:
                current = section.stdout
            elif words[1] == "stderr":
                current = section.stderr
            elif words[1] == "rc":
                section.rc = int(words[2])
                current = None
            continue
        if current is not None:
            current.append(line)
    return sections


def atomic_record(path: str, producer: str, mode: str = "0644", owner: str | None = None) -> str:
    """A command that replaces `path` with what the shell command `producer` prints, atomically: a
    unique temp file in the same directory (`mktemp`: two writers never share one), fsync (`sync FILE`),
    then rename. A writer killed half-way leaves the old file whole (and a stray temp file); a
    failed `producer` leaves it as it was and fails the command. Every record or state file the
    project writes on a host goes through here.

    >>> atomic_record("/var/lib/x/last", "date +%s").split(" && ")[1]
    '_pbk_t=$(mktemp /var/lib/x/last.XXXXXX)'
    """
    steps = [f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0] or '/')}", f"_pbk_t=$(mktemp {shlex.quote(path)}.XXXXXX)",
             f"{{ {producer}; }} > \"$_pbk_t\"", publish('"$_pbk_t"', path, mode, owner)]
    return "{ _pbk_t=; " + " && ".join(steps) + "; } || { rm -f \"$_pbk_t\"; false; }"


def publish(temp: str, path: str, mode: str = "0644", owner: str | None = None) -> str:
    """The last steps of `atomic_record` for a temp file written otherwise (`temp`: a shell word,
    e.g. `"$_t"`, made by `mktemp PATH.XXXXXX`): its mode (and owner), fsync, rename onto `path`."""
    steps = [f"chmod {mode} {temp}"] + ([f"chown {shlex.quote(owner)} {temp}"] if owner else [])
    return " && ".join([*steps, f"sync {temp}", f"mv -f {temp} {shlex.quote(path)}"])


def atomic_write(path: str, content: str, mode: str = "0644", owner: str | None = None) -> str:
    """A command that replaces `path` with `content` atomically (`atomic_record`). For public
    material only: the content is in argv.

    >>> "printf '%s' 'hi" in atomic_write("/etc/motd", "hi\\n")
    True
    """
    return atomic_record(path, f"printf '%s' {shlex.quote(content)}", mode, owner)


def new_secret_file(path: str, nbytes: int = 32) -> str:
    """A command that makes `path` (mode 0600, its directory 0700 when new) holding `nbytes` random bytes
    as base64, made on the host from its own /dev/urandom (the secret never travels), unless `path`
    already exists: a hard link never replaces a file, so two runs at once keep the first one's.

    >>> new_secret_file("/var/lib/p").split(" && ")[0]
    'umask 077'
    """
    directory = shlex.quote(path.rsplit("/", 1)[0] or "/")
    return " && ".join([
        "umask 077", f"mkdir -p {directory}", f"_t=$(mktemp {shlex.quote(path)}.XXXXXX)",
        f"head -c {int(nbytes)} /dev/urandom | base64 -w0 > \"$_t\"", "echo >> \"$_t\"", "sync \"$_t\"",
        f"{{ ln \"$_t\" {shlex.quote(path)}; _rc=$?; rm -f \"$_t\"; [ $_rc -eq 0 ] || [ -s {shlex.quote(path)} ]; }}",
    ])
