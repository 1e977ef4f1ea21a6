"""The repo server's sshd: a drop-in that ends the sessions of repo users whose client is gone.

After a network cut, the client's ssh gives up (its ServerAliveInterval), but the server's `borg serve`
only reads and never learns of it: it keeps the repo locked until sshd ends the session. One
`Match User <repo user>` drop-in per repo user makes sshd probe the client (`ClientAliveInterval`)
and close a session after `ClientAliveCountMax` unanswered probes:

>>> print(dropin_content("borg", 30, 3), end="")
# pyinfra-backup (tasks.borg.repo_server): end borg's sessions whose client stopped answering
Match User borg
    ClientAliveInterval 30
    ClientAliveCountMax 3
>>> includes_dropins("Port 22\\nInclude /etc/ssh/sshd_config.d/*.conf\\n")
True
"""

from __future__ import annotations

import fnmatch
import re
import shlex

DROPIN_DIR = "/etc/ssh/sshd_config.d"
SSHD_CONFIG = "/etc/ssh/sshd_config"
PIDFILE = "/run/sshd.pid"
CLIENT_ALIVE_INTERVAL = 30  # `borgbackup.clientAliveInterval` of a repo server, seconds
CLIENT_ALIVE_COUNT_MAX = 3  # `borgbackup.clientAliveCountMax`


def dropin_path(user: str) -> str:
    return f"{DROPIN_DIR}/pyinfra-backup-{user}.conf"


def dropin_content(user: str, interval: int, count: int) -> str:
    name = f'"{user}"' if not re.fullmatch(r"[A-Za-z0-9._-]+", user) else user
    return (f"# pyinfra-backup (tasks.borg.repo_server): end {user}'s sessions whose client stopped answering\n"
            f"Match User {name}\n    ClientAliveInterval {int(interval)}\n    ClientAliveCountMax {int(count)}\n")


def includes_dropins(sshd_config: str | None, user: str = "x") -> bool:
    """Whether the main sshd_config includes our drop-in (an `Include` whose pattern matches its path;
    relative patterns are under /etc/ssh, as sshd reads them)."""
    for line in (sshd_config or "").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].lower() == "include":
            for pattern in words[1:]:
                pattern = pattern if pattern.startswith("/") else f"/etc/ssh/{pattern}"
                if fnmatch.fnmatchcase(dropin_path(user), pattern):
                    return True
    return False


def install_command(path: str, content: str, reload: bool) -> str:
    """Put the drop-in in place atomically, check the whole configuration with `sshd -t`, and put back
    what was there when the check fails (the host fails with sshd's words); with `reload`, SIGHUP to
    the sshd of PIDFILE so that new sessions get it (running ones are left alone)."""
    q = shlex.quote
    lines = [
        f"_p={q(path)}; mkdir -p {q(DROPIN_DIR)} && _t=$(mktemp {q(path)}.XXXXXX) || exit 1",  # not *.conf: no Include reads it
        f"printf '%s' {q(content)} > \"$_t\" && chmod 0644 \"$_t\" || {{ rm -f \"$_t\"; exit 1; }}",
        '_old=; if [ -e "$_p" ]; then _old=$(mktemp "$_p.old.XXXXXX") && cp -p "$_p" "$_old" || exit 1; fi',
        'mv -f "$_t" "$_p" || exit 1',
        '_sshd=$(command -v sshd || echo /usr/sbin/sshd)',
        'if ! _why=$("$_sshd" -t 2>&1); then',
        '  if [ -n "$_old" ]; then mv -f "$_old" "$_p"; else mv -f "$_p" "$_p.rejected"; fi',
        '  echo "sshd: the drop-in $_p fails sshd -t (left as it was): $_why" >&2; exit 1',
        "fi",
        '[ -z "$_old" ] || rm -f "$_old"',  # our own copy of the file just replaced
    ]
    if reload:
        lines.append(f"kill -HUP \"$(cat {q(PIDFILE)})\" || {{ echo 'sshd: no sshd to reload ({PIDFILE})' >&2; exit 1; }}")
    return "\n".join(lines)
