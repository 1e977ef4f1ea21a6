"""Namespace test fleet: SSH hosts made of a netns + mount/UTS namespace over an overlay of ``/``.

Each host is one ``sshd`` (its "init") inside:
  - a named network namespace ``pbk-<slot>-<name>`` with one veth (``pbk-eth0``, 10.213.<slot>.<index>/16)
    whose peer ``pbk-<slot>-<index>`` sits in the bridge ``pbk-br0`` (10.213.0.1/16) on the machine;
  - its own mount and UTS namespace: root = overlay(lower=/, upper=<state>/<name>/upper) reached with
    pivot_root, fresh /proc and /sys, /dev bound in, tmpfs on /tmp and /run, its own hostname;
  - its own PID namespace, sshd being its PID 1: orphans inside a host are reaped by its sshd, and killing
    that sshd kills everything in the host.
The upper layers live on one tmpfs per fleet (``<state_root>/pbk-<slot>``, source ``pbk-fleet-<slot>``).
Kernel 6.18 does mount an overlay whose upper/work dirs lie inside its lower ``/`` on the same filesystem, but
it turns them into traps: any lookup of them through the overlay fails with ELOOP, so a host walking its / (a
borg backup of /, ``find /``) would hit errors. A lower layer does not cross mount points, so the tmpfs shows
up as an empty directory inside the hosts.

Everything carries the ``pbk-`` prefix so that :func:`cleanup_leftovers` finds what a crashed run left.
A fleet records its owner process in ``<state>/owner.json``; fleets whose owner is dead are leftovers.
No routes besides the bridge subnet, no NAT, no forwarding: hosts only talk to the machine and each other.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_ROOT = PROJECT_ROOT / ".state" / "fleet"

# The family of names and addresses this fleet code uses. Two families never touch each other's fleets (their
# namespaces, veths, bridge, lock and subnet all differ): a fresh-root CI run (scripts/ci-fresh.sh) or a second
# developer on the same machine sets PBK_FLEET_FAMILY=pbc:214 (a 2-4 letter prefix, the second octet of 10.X/16).
FAMILY, _, _OCTET = os.environ.get("PBK_FLEET_FAMILY", "pbk:213").partition(":")
if not re.fullmatch(r"[a-z]{2,4}", FAMILY) or not _OCTET.isdigit() or not 1 <= int(_OCTET) <= 254:
    raise RuntimeError(f"PBK_FLEET_FAMILY={os.environ.get('PBK_FLEET_FAMILY')!r}: expected PREFIX:OCTET, e.g. pbc:214")
PREFIX = f"{FAMILY}-"
BRIDGE = f"{FAMILY}-br0"
NET_PREFIX = f"10.{int(_OCTET)}"
BRIDGE_ADDRESS = f"{NET_PREFIX}.0.1"
# A fixed MAC: a bridge without one takes the smallest MAC of its ports, so it changed whenever a host came
# or went, and hosts' ARP entries for 10.213.0.1 went stale (connections to the machine timed out).
BRIDGE_MAC = f"02:70:62:62:{int(_OCTET):02x}:01"
PREFIXLEN = 16
GUEST_IF = "pbk-eth0"
LOCK_PATH = Path(f"/run/{FAMILY}-fleet.lock")
NETNS_DIR = Path("/run/netns")
MAX_SLOT = 254
LINK_GROUP_BASE = int(_OCTET) * 10000  # veths of slot S are in link group BASE+S: one `link del group` = one kernel batch
MAX_HOSTS = 254
SSH_PORT = 22
REQUIRED_TOOLS = ("ip", "nsenter", "unshare", "mount", "umount", "pivot_root", "hostname", "/usr/sbin/sshd", "ssh")

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_ENV = {"PATH": HOST_PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash", "LANG": "C.UTF-8"}

_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
_NETNS_RE = re.compile(rf"^{PREFIX}(\d+)-(.+)$")
_VETH_RE = re.compile(rf"^{PREFIX}(\d+)-(\d+)$")
_STATE_DIR_RE = re.compile(rf"^{PREFIX}(\d+)$")
_FLEET_MOUNT = f"{PREFIX}fleet-"
_EXEC_RE = re.compile(rb"session_input_channel_req: session \d+ req exec\b")

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_CHILD_SUBREAPER = 36
_MNT_DETACH = 2

# Runs inside the new netns + mount/UTS/PID namespace (via nsenter + unshare) as PID 1 of the host;
# $1=host dir, $2=name, $3=address, $4=prefix length, $5=interface, $6/$7=the machine's address/MAC
# (a permanent neighbour entry: no ARP needed to reach the machine). It becomes sshd, the host's init, which
# also reaps whatever gets orphaned inside the host.
_START_SCRIPT = r"""
set -eu
D=$1; R=$1/root
mount --make-rprivate /
mount -t overlay pbk-overlay -o "lowerdir=/,upperdir=$D/upper,workdir=$D/work" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --rbind /sys/fs/cgroup "$R/sys/fs/cgroup"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=1777,nosuid,nodev pbk-tmp "$R/tmp"
mount -t tmpfs -o mode=0755,nosuid,nodev pbk-run "$R/run"
hostname "$2"
printf 'link set lo up\naddr add %s/%s dev %s\nlink set %s up\nneigh replace %s lladdr %s dev %s nud permanent\n' \
    "$3" "$4" "$5" "$5" "$6" "$7" "$5" | ip -batch -
mkdir -m 0755 "$R/run/sshd" "$R/run/pbk-oldroot"
cd "$R"
pivot_root . run/pbk-oldroot
umount -l /run/pbk-oldroot
rmdir /run/pbk-oldroot
exec /usr/sbin/sshd -D -E /var/log/sshd.log -f /etc/ssh/sshd_config
"""

_SSHD_CONFIG = """\
# sshd_config of fleet host {name} (generated by tests/fleet; the host's own, not the machine's)
# First, as Debian's: a Match block of an included file ends with that file (sshd -T checked on 9.2)
Include /etc/ssh/sshd_config.d/*.conf
ListenAddress {address}
Port {port}
AddressFamily inet
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PidFile /run/sshd.pid
MaxStartups 200:30:400
MaxSessions 200
LogLevel DEBUG1
PrintMotd no
PrintLastLog no
X11Forwarding no
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
"""

_BASHRC = """\
# ~/.bashrc of a test fleet host (tests/fleet): deliberately minimal. The machine's root .bashrc
# runs `pyenv init`, which would make every remote command slow.
[ -z "$PS1" ] && return
PS1='\\h:\\w\\$ '
"""

_PROFILE = """\
# ~/.profile of a test fleet host (tests/fleet)
if [ -n "$BASH" ] && [ -f ~/.bashrc ]; then . ~/.bashrc; fi
"""


_PODMAN_STORAGE = """\
# podman storage of a test fleet host (tests/fleet): its root is an overlay, on which podman's default
# `overlay` driver fails ("'overlay' is not supported over overlayfs"); vfs needs nothing more.
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
"""


class FleetError(RuntimeError):
    pass


class RunError(subprocess.CalledProcessError):
    """A command run inside a host with ``check=True`` failed; the message carries its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


@dataclass
class Host:
    name: str
    index: int
    address: str
    netns: str
    veth: str
    dir: Path
    ssh_port: int = SSH_PORT
    pid: int = 0
    host_key: str = ""
    machine_id: str = ""
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def root(self) -> Path:
        """The host's / as the machine sees it (through the live overlay)."""
        return Path(f"/proc/{self.pid}/root")


# ---------------------------------------------------------------- small system helpers


def check_prerequisites() -> None:
    """Raise FleetError unless we are root and have the tools; never skip silently."""
    problems = []
    if os.geteuid() != 0:
        problems.append(f"must run as root (euid {os.geteuid()})")
    for tool in REQUIRED_TOOLS:
        if not (os.access(tool, os.X_OK) if tool.startswith("/") else shutil.which(tool)):
            problems.append(f"missing tool: {tool}")
    if problems:
        raise FleetError("test fleet unavailable: " + "; ".join(problems) + " (run scripts/install.sh as root)")


def _sh(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise FleetError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _ip_batch(lines: list[str], force: bool = False) -> None:
    if lines:
        _sh("ip", *(["-force"] if force else []), "-batch", "-", input="\n".join(lines) + "\n", check=not force)


def _mount_tmpfs(source: str, target: Path) -> None:
    if _libc.mount(source.encode(), str(target).encode(), b"tmpfs", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise FleetError(f"mount tmpfs on {target}: {os.strerror(err)}")


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), 0) != 0:
        err = ctypes.get_errno()
        if _libc.umount2(target.encode(), _MNT_DETACH) != 0:
            raise FleetError(f"umount {target}: {os.strerror(err)}")


def _become_subreaper() -> None:
    # Orphans of our hosts' processes (a host init whose unshare parent died first) come back to us and
    # get reaped at once, instead of lingering as zombies of PID 1 (which reaps only every ~1 s here).
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _proc_start_time(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _pid_state(pid: int) -> tuple[str, int] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def owner_alive(owner: dict | None) -> bool:
    if not owner:
        return False
    return _proc_start_time(int(owner.get("pid", 0))) == owner.get("start")


def _ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _pids_in(netns_inodes: set[int], mnt_inodes: set[int] = frozenset()) -> set[int]:
    """Processes in any of these network namespaces, everything sharing their mount namespaces, and all
    their descendants (also zombies, whose namespace links are already gone: once their parent dies they
    are reparented to us, the subreaper, and must be reaped)."""
    me = os.getpid()
    my_mnt = _ns_inode(f"/proc/{me}/ns/mnt")
    procs = {}
    for pid in _all_pids():
        if pid != me and (st := _pid_state(pid)) is not None:
            procs[pid] = (st[1], _ns_inode(f"/proc/{pid}/ns/net"), _ns_inode(f"/proc/{pid}/ns/mnt"))
    found = {pid for pid, (_, net, _) in procs.items() if net in netns_inodes}
    mnts = set(mnt_inodes) | {procs[pid][2] for pid in found if procs[pid][2] not in (None, my_mnt)}
    found |= {pid for pid, (_, _, mnt) in procs.items() if mnt in mnts}
    while True:
        more = {pid for pid, (ppid, _, _) in procs.items() if ppid in found and pid not in found}
        if not more:
            return found
        found |= more


def _kill_and_reap(find_pids, popens: Iterable[subprocess.Popen] = (), timeout: float = 30.0) -> None:
    """SIGKILL what ``find_pids()`` returns until it returns nothing; reap what is (or becomes) ours."""
    popens = list(popens)
    deadline = time.monotonic() + timeout
    while True:
        pids = find_pids()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            _wait_gone(pid, pids, deadline)
        if time.monotonic() > deadline:
            survivors = find_pids()
            if survivors:
                raise FleetError(f"processes survive SIGKILL: {sorted(survivors)}")
            break
    for p in popens:
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        p.wait(timeout=max(0.1, deadline - time.monotonic()))


def _wait_gone(pid: int, killed: set[int], deadline: float) -> None:
    """Wait until pid is reaped. A zombie whose parent is also being killed will be reparented to us
    (we are a child subreaper) or to PID 1: wait for that; reap it if it is ours."""
    me = os.getpid()
    while time.monotonic() < deadline:
        # A dying PID-namespace init waits until every process of its namespace is reaped; one whose
        # parent outside the namespace died is ours to reap (we are a subreaper), and a zombie has no
        # /proc/PID/ns left, so the namespace scan does not list it: reap our zombies here.
        for other in _all_pids():
            if _pid_state(other) == ("Z", me):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(other, os.WNOHANG)
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return
        except ChildProcessError:
            st = _pid_state(pid)
            if st is None:
                return
            state, ppid = st
            if state == "Z" and ppid != me and ppid not in killed:
                return  # someone else's zombie (e.g. PID 1's, reaped lazily here): holds nothing any more
        time.sleep(0.001)


@contextlib.contextmanager
def _global_lock() -> Iterator[None]:
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _gen_ed25519(comment: str) -> tuple[bytes, str]:
    """(OpenSSH private key, "ssh-ed25519 AAAA... comment")."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption())
    public = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}"


def _write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def _mkdirs_like_lower(upper: Path, rel: str) -> Path:
    """Create upper/rel with each component's mode and owner copied from the machine's /rel.

    A directory that exists in upper wins over lower for its own attributes (e.g. /root must stay 0700).
    """
    cur_upper, cur_lower = upper, Path("/")
    for part in Path(rel).parts:
        cur_upper, cur_lower = cur_upper / part, cur_lower / part
        if not cur_upper.exists():
            cur_upper.mkdir()
            try:
                st = os.stat(cur_lower)
                os.chmod(cur_upper, stat.S_IMODE(st.st_mode))
                os.chown(cur_upper, st.st_uid, st.st_gid)
            except FileNotFoundError:
                os.chmod(cur_upper, 0o755)
    return cur_upper


def _whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def _mac(kind: int, slot: int, index: int) -> str:
    """A MAC that is a function of the address: a reused 10.213.S.I never meets a stale ARP entry
    (the machine's or another host's), which made connections time out for ~30 s."""
    return f"02:70:62:{kind:02x}:{slot:02x}:{index:02x}"


def _listening(pid: int, port: int) -> bool:
    want = f":{port:04X}"
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1].endswith(want) and fields[3] == "0A":
                    return True
    except (OSError, StopIteration):
        pass
    return False


# ---------------------------------------------------------------- discovery of pbk- things


def _mounts() -> list[tuple[str, str]]:
    """(mount point, source) of every pbk-fleet tmpfs in our mount namespace."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            point = left.split()[4].replace("\\040", " ")
            fstype, source = right.split()[:2]
            if source.startswith(_FLEET_MOUNT):
                found.append((point, source))
    return found


def discover() -> dict:
    """Everything pbk- on the machine, grouped by fleet slot (None: not attributable to a slot)."""
    netns = sorted(p.name for p in NETNS_DIR.glob(f"{PREFIX}*")) if NETNS_DIR.exists() else []
    links = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(PREFIX))
    fleets: dict = {}

    def slot_entry(slot):
        return fleets.setdefault(slot, {"netns": [], "links": [], "mounts": [], "owner": None})

    for name in netns:
        m = _NETNS_RE.match(name)
        slot_entry(int(m.group(1)) if m else None)["netns"].append(name)
    for name in links:
        if name == BRIDGE:
            continue
        m = _VETH_RE.match(name)
        slot_entry(int(m.group(1)) if m else None)["links"].append(name)
    for point, source in _mounts():
        suffix = source[len(_FLEET_MOUNT) :]
        slot = int(suffix) if suffix.isdigit() else None
        entry = slot_entry(slot)
        entry["mounts"].append(point)
        with contextlib.suppress(OSError, ValueError):
            entry["owner"] = json.loads(Path(point, "owner.json").read_text())
    for entry in fleets.values():
        entry["alive"] = owner_alive(entry["owner"])
    return {"bridge": (Path("/sys/class/net") / BRIDGE).exists(), "fleets": fleets}


def _teardown_slot(slot: int | None, entry: dict, popens: Iterable[subprocess.Popen] = ()) -> None:
    netns_inodes = {i for i in (_ns_inode(str(NETNS_DIR / n)) for n in entry["netns"]) if i is not None}
    _kill_and_reap(lambda: _pids_in(netns_inodes) if netns_inodes else set(), popens)
    for point in entry["mounts"]:
        _umount(point)
        with contextlib.suppress(OSError):
            Path(point).rmdir()
    with _global_lock():
        _delete_links_and_netns(slot, entry["links"], entry["netns"])
        _maybe_delete_bridge()


def _delete_links_and_netns(slot: int | None, links: list[str], netns: list[str]) -> None:
    """Caller holds the lock. Deleting veths one by one costs ~10 ms each in the kernel; a group is one batch."""
    if slot is not None and links:
        _sh("ip", "link", "del", "group", str(LINK_GROUP_BASE + slot), check=False)
    left = [n for n in links if (Path("/sys/class/net") / n).exists()]
    _ip_batch([f"link del {n}" for n in left] + [f"netns del {n}" for n in netns], force=True)


def _ensure_bridge() -> None:
    """Create pbk-br0 (10.213.0.1/16, fixed MAC) unless it exists (caller holds the lock)."""
    bridge = Path("/sys/class/net", BRIDGE)
    if not bridge.exists():
        _ip_batch(
            [
                f"link add {BRIDGE} address {BRIDGE_MAC} type bridge",
                f"addr add {BRIDGE_ADDRESS}/{PREFIXLEN} dev {BRIDGE}",
                f"link set {BRIDGE} up",
            ]
        )
    elif (bridge / "address").read_text().strip() != BRIDGE_MAC:
        _sh("ip", "link", "set", BRIDGE, "address", BRIDGE_MAC)  # made by an older version of this module


def _maybe_delete_bridge() -> None:
    """Delete pbk-br0 when no port is left in it and no live fleet might still add one (caller holds the lock)."""
    brif = Path("/sys/class/net") / BRIDGE / "brif"
    if not brif.exists() or any(brif.iterdir()) or _live_fleet_exists():
        return
    _sh("ip", "link", "del", BRIDGE, check=False)


def _live_fleet_exists() -> bool:
    for point, _ in _mounts():
        with contextlib.suppress(OSError, ValueError):
            if owner_alive(json.loads(Path(point, "owner.json").read_text())):
                return True
    return False


def cleanup_leftovers(force: bool = False, slots: Iterable[int] | None = None, state_root: Path | str | None = None) -> list:
    """Remove pbk- namespaces, veths, processes, mounts and state dirs of dead fleets.

    A fleet is a leftover when its owner process (recorded in its state tmpfs) is gone, or when nothing
    records an owner. ``force`` removes live fleets too; ``slots`` restricts the cleanup to those slots.
    Returns the slots that were cleaned.
    """
    check_prerequisites()
    wanted = set(slots) if slots is not None else None
    cleaned = []
    found = discover()
    for slot, entry in sorted(found["fleets"].items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        if wanted is not None and slot not in wanted:
            continue
        if entry["alive"] and not force:
            continue
        _teardown_slot(slot, entry)
        cleaned.append(slot)
    root = Path(state_root) if state_root else DEFAULT_STATE_ROOT
    with _global_lock():
        _maybe_delete_bridge()
        mounted = {p for p, _ in _mounts()}
        for d in root.glob(f"{PREFIX}*") if root.is_dir() else ():  # state dirs no tmpfs is mounted on any more
            m = _STATE_DIR_RE.match(d.name)
            if str(d) in mounted or (wanted is not None and (not m or int(m.group(1)) not in wanted)):
                continue
            shutil.rmtree(d, ignore_errors=True)
    return cleaned


# ---------------------------------------------------------------- the fleet


_LIVE_FLEETS: list[Fleet] = []


class Fleet:
    """A set of namespace SSH hosts owned by this process. See the module docstring."""

    def __init__(self, state_root: Path | str = DEFAULT_STATE_ROOT, slot: int | None = None):
        self.state_root = Path(state_root)
        self._want_slot = slot
        self.slot: int | None = None
        self.state_dir: Path | None = None
        self.groups: dict[str, list[str]] = {}
        self._hosts: dict[str, Host] = {}
        self._controller_pub = ""

    # -- paths and lookups

    @property
    def hosts(self) -> list[Host]:
        return list(self._hosts.values())

    def host(self, name: str) -> Host:
        try:
            return self._hosts[name]
        except KeyError:
            raise FleetError(f"no host {name!r} in this fleet ({', '.join(self._hosts) or 'empty'})") from None

    def __contains__(self, name: str) -> bool:
        return name in self._hosts

    def _require_up(self) -> Path:
        if self.state_dir is None:
            raise FleetError("fleet is not up")
        return self.state_dir

    @property
    def key_path(self) -> Path:
        return self._require_up() / "id_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        return self._require_up() / "known_hosts"

    @property
    def ssh_config_path(self) -> Path:
        return self._require_up() / "ssh_config"

    @property
    def controller_public_key(self) -> str:
        return self._controller_pub

    def host_key(self, name: str) -> str:
        return " ".join(self.host(name).host_key.split()[:2])

    # -- lifecycle

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self, names: Iterable[str], group: str | None = None) -> list[Host]:
        """Start hosts (in parallel); the first call also sets up the bridge, the state tmpfs and keys."""
        names = list(names)
        if self.state_dir is None:
            self._setup()
        hosts = self._start(names)
        if group:
            self.groups.setdefault(group, []).extend(names)
        return hosts

    def add(self, name: str, group: str | None = None) -> Host:
        return self.up([name], group=group)[0]

    def remove(self, name: str) -> None:
        host = self.host(name)
        self._stop([host])
        del self._hosts[name]
        for members in self.groups.values():
            if name in members:
                members.remove(name)
        self._write_ssh_files()
        self._refresh_guest_files()

    def down(self) -> None:
        """Stop every host and remove everything this fleet made. Idempotent."""
        if self.state_dir is None:
            return
        state_dir = self.state_dir
        hosts = self.hosts
        entry = {
            "netns": [h.netns for h in hosts],
            "links": [h.veth for h in hosts],
            "mounts": [str(state_dir)] if os.path.ismount(state_dir) else [],
        }
        _teardown_slot(self.slot, entry, [h._proc for h in hosts if h._proc])
        # Whatever else carries this slot (a host that failed half-way) goes too.
        extra = discover()["fleets"].get(self.slot)
        if extra and (extra["netns"] or extra["links"] or extra["mounts"]):
            _teardown_slot(self.slot, extra)
        with contextlib.suppress(OSError):
            state_dir.rmdir()
        self._hosts.clear()
        self.groups = {}
        self.state_dir = None
        self.slot = None
        with contextlib.suppress(ValueError):
            _LIVE_FLEETS.remove(self)

    # -- setup

    def _setup(self) -> None:
        check_prerequisites()
        _become_subreaper()
        self.state_root.mkdir(parents=True, exist_ok=True)
        with _global_lock():
            found = discover()
            used = {s for s in found["fleets"] if s is not None}
            used |= {int(m.group(1)) for d in self.state_root.glob(f"{PREFIX}*") if (m := _STATE_DIR_RE.match(d.name))}
            if self._want_slot is not None:
                if self._want_slot in used:
                    raise FleetError(f"fleet slot {self._want_slot} is in use (see `python -m tests.fleet status`)")
                slot = self._want_slot
            else:
                free = [s for s in range(1, MAX_SLOT + 1) if s not in used]
                if not free:
                    raise FleetError("no free fleet slot")
                slot = free[0]
            state_dir = self.state_root / f"{PREFIX}{slot}"
            state_dir.mkdir()
            _mount_tmpfs(f"{_FLEET_MOUNT}{slot}", state_dir)
            self.slot, self.state_dir = slot, state_dir
            _LIVE_FLEETS.append(self)
            owner = {"pid": os.getpid(), "start": _proc_start_time(os.getpid()), "state_root": str(self.state_root)}
            _write(state_dir / "owner.json", json.dumps(owner))
            _ensure_bridge()
        private, public = _gen_ed25519(f"pbk-fleet-{slot}-controller")
        _write(self.key_path, private, 0o600)
        _write(self.key_path.with_suffix(".pub"), public + "\n", 0o644)
        self._controller_pub = public
        self._write_ssh_files()

    def _start(self, names: list[str]) -> list[Host]:
        slot, state_dir = self.slot, self._require_up()
        for name in names:
            if not _NAME_RE.match(name):
                raise FleetError(f"bad host name {name!r} (lowercase letters, digits, '-'; at most 32)")
            if name in self._hosts or names.count(name) > 1:
                raise FleetError(f"host {name!r} already in the fleet")
        used = {h.index for h in self._hosts.values()}
        free = [i for i in range(1, MAX_HOSTS + 1) if i not in used]
        if len(free) < len(names):
            raise FleetError(f"a fleet holds at most {MAX_HOSTS} hosts")
        new, private_keys = [], {}
        for name, index in zip(names, free):
            private_keys[name], public = _gen_ed25519(f"root@{name}")
            host = Host(
                name=name,
                index=index,
                address=f"{NET_PREFIX}.{slot}.{index}",
                netns=f"{PREFIX}{slot}-{name}",
                veth=f"{PREFIX}{slot}-{index}",
                dir=state_dir / name,
                host_key=public,
                machine_id=secrets.token_hex(16),
            )
            new.append(host)
            self._hosts[name] = host
        try:
            for host in new:
                self._prepare_upper(host, private_keys[host.name])
            with _global_lock():
                _ensure_bridge()
                lines = []
                for h in new:
                    lines += [
                        f"netns add {h.netns}",
                        f"link add {h.veth} address {_mac(0x6c, slot, h.index)} type veth"
                        f" peer name {GUEST_IF} address {_mac(0x6b, slot, h.index)} netns {h.netns}",
                        f"link set {h.veth} master {BRIDGE} group {LINK_GROUP_BASE + slot} up",
                    ]
                _ip_batch(lines)
            for h in new:
                log = open(h.dir / "console.log", "wb")
                h._proc = subprocess.Popen(
                    ["nsenter", f"--net={NETNS_DIR / h.netns}", "--",
                     "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--",
                     "/bin/sh", "-c", _START_SCRIPT, "pbk-start", str(h.dir), h.name, h.address,
                     str(PREFIXLEN), GUEST_IF, BRIDGE_ADDRESS, BRIDGE_MAC],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, env=HOST_ENV,
                )
                log.close()
            self._wait_ready(new)
        except BaseException:
            with contextlib.suppress(Exception):
                self._stop(new)
            for h in new:
                self._hosts.pop(h.name, None)
            raise
        self._write_ssh_files()
        self._refresh_guest_files(skip=new)
        return new

    def _prepare_upper(self, h: Host, private_key: bytes) -> None:
        upper = h.upper
        for d in (upper, h.dir / "work", h.dir / "root"):
            d.mkdir(parents=True)
        os.chmod(upper, 0o755)
        etc = _mkdirs_like_lower(upper, "etc")
        _write(etc / "hostname", h.name + "\n")
        _write(etc / "machine-id", h.machine_id + "\n", 0o444)
        _write(_mkdirs_like_lower(upper, "var/lib/dbus") / "machine-id", h.machine_id + "\n", 0o444)
        _write(etc / "hosts", self._hosts_file(Path("/etc/hosts").read_text()))
        ssh = _mkdirs_like_lower(upper, "etc/ssh")
        ours = {"ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"}
        for other in Path("/etc/ssh").glob("ssh_host_*"):  # the machine's other host keys are not this host's
            if other.name not in ours:
                _whiteout(ssh / other.name)
        _write(ssh / "ssh_host_ed25519_key", private_key, 0o600)
        _write(ssh / "ssh_host_ed25519_key.pub", h.host_key + "\n", 0o644)
        _write(ssh / "sshd_config", _SSHD_CONFIG.format(name=h.name, address=h.address, port=h.ssh_port))
        _write(ssh / "ssh_known_hosts", self._known_hosts_text())
        root = _mkdirs_like_lower(upper, "root")
        _write(root / ".bashrc", _BASHRC)
        _write(root / ".profile", _PROFILE)
        dot_ssh = root / ".ssh"
        dot_ssh.mkdir(mode=0o700)
        os.setxattr(dot_ssh, "trusted.overlay.opaque", b"y")  # hide the machine's /root/.ssh, if any
        _write(dot_ssh / "authorized_keys", self._controller_pub + "\n", 0o600)
        self._as_on_a_fresh_machine(upper, root)

    @staticmethod
    def _as_on_a_fresh_machine(upper: Path, root: Path) -> None:
        """A host starts as a new machine would, not with what was configured or left on this one: no git
        identity, no borg security/cache dirs, no podman storage or sshd drop-ins of the machine's. podman gets the storage a
        host whose root is an overlay needs (the default `overlay` driver cannot stack on it): `vfs`."""
        _whiteout(root / ".gitconfig")
        for rel in ("root/.config", "root/.cache", "var/lib/containers", "etc/ssh/sshd_config.d"):
            empty = _mkdirs_like_lower(upper, rel)
            os.setxattr(empty, "trusted.overlay.opaque", b"y")
        _write(_mkdirs_like_lower(upper, "etc/containers") / "storage.conf", _PODMAN_STORAGE)

    def _wait_ready(self, hosts: list[Host], timeout: float = 20.0) -> None:
        pending = list(hosts)
        deadline = time.monotonic() + timeout
        while pending:
            still = []
            for h in pending:
                if not h.pid:  # unshare's only child: PID 1 of the host, sshd once the script exec'd it
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        p = h._proc.pid
                        h.pid = int(Path(f"/proc/{p}/task/{p}/children").read_text().split()[0])
                if h.pid and _listening(h.pid, h.ssh_port):
                    continue
                if h._proc.poll() is not None:
                    raise FleetError(f"host {h.name} failed to start (exit {h._proc.returncode}):\n{self._console(h)}")
                still.append(h)
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    raise FleetError(
                        f"hosts not listening after {timeout}s: {[h.name for h in pending]}\n"
                        + "\n".join(self._console(h) for h in pending[:3])
                    )
                time.sleep(0.002)

    def _console(self, h: Host) -> str:
        text = (h.dir / "console.log").read_text(errors="replace") if (h.dir / "console.log").exists() else ""
        with contextlib.suppress(OSError):
            if h.pid:
                text += (h.root / "var/log/sshd.log").read_text(errors="replace")[-2000:]
        return f"--- {h.name}\n{text}"

    def _stop(self, hosts: list[Host]) -> None:
        entry = {"netns": [h.netns for h in hosts if (NETNS_DIR / h.netns).exists()],
                 "links": [h.veth for h in hosts if (Path("/sys/class/net") / h.veth).exists()], "mounts": []}
        netns_inodes = {i for i in (_ns_inode(str(NETNS_DIR / n)) for n in entry["netns"]) if i is not None}
        _kill_and_reap(lambda: _pids_in(netns_inodes) if netns_inodes else set(), [h._proc for h in hosts if h._proc])
        with _global_lock():
            _ip_batch([f"link del {n}" for n in entry["links"]] + [f"netns del {n}" for n in entry["netns"]], force=True)
        for h in hosts:
            shutil.rmtree(h.dir, ignore_errors=True)

    # -- files shared by the fleet

    def _known_hosts_text(self) -> str:
        return "".join(
            f"{h.name},{h.address} {' '.join(h.host_key.split()[:2])}\n" for h in self._hosts.values()
        )

    def _hosts_file(self, base: str) -> str:
        begin, end = "# pbk-fleet begin", "# pbk-fleet end"
        kept, skipping = [], False
        for line in base.splitlines():
            if line.strip() == begin:
                skipping = True
            elif line.strip() == end:
                skipping = False
            elif not skipping:
                kept.append(line)
        block = [begin, f"{BRIDGE_ADDRESS}\tpbk-machine"] + [f"{h.address}\t{h.name}" for h in self._hosts.values()]
        return "\n".join(kept + block + [end]) + "\n"

    def _write_ssh_files(self) -> None:
        _write(self.known_hosts_path, self._known_hosts_text(), 0o644)
        blocks = [f"Host {h.name} {h.address}\n    HostName {h.address}\n" for h in self._hosts.values()]
        blocks.append(
            "Host *\n"
            "    User root\n"
            f"    Port {SSH_PORT}\n"
            f"    IdentityFile {self.key_path}\n"
            "    IdentitiesOnly yes\n"
            "    IdentityAgent none\n"
            f"    UserKnownHostsFile {self.known_hosts_path}\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n"
            "    BatchMode yes\n"
            "    ConnectTimeout 5\n"
            "    ControlMaster no\n"
            "    ControlPath none\n"
            "    LogLevel ERROR\n"
        )
        _write(self.ssh_config_path, f"# ssh -F {self.ssh_config_path} HOST  (tests/fleet)\n" + "\n".join(blocks))

    def _refresh_guest_files(self, skip: Iterable[Host] = ()) -> None:
        """Tell running hosts about the current fleet: /etc/hosts and /etc/ssh/ssh_known_hosts."""
        skip_names = {h.name for h in skip}
        known = self._known_hosts_text()
        for h in self._hosts.values():
            if h.name in skip_names:
                continue
            with contextlib.suppress(OSError):
                hosts_path = h.root / "etc/hosts"
                hosts_path.write_text(self._hosts_file(hosts_path.read_text()))
                (h.root / "etc/ssh/ssh_known_hosts").write_text(known)

    # -- use

    def run(self, name: str, cmd: str, check: bool = True, input: str | None = None,
            timeout: float | None = 120) -> subprocess.CompletedProcess:
        """Run a bash command inside the host (its namespaces and root), not through ssh."""
        host = self.host(name)
        proc = subprocess.run(
            ["nsenter", "-t", str(host.pid), "--net", "--mount", "--uts", "--pid", "--root", "--wd", "--",
             "/bin/bash", "-c", cmd],
            input=input, capture_output=True, text=True, env=HOST_ENV, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RunError(proc.returncode, f"[{name}] {cmd}", proc.stdout, proc.stderr)
        return proc

    def path(self, name: str, path: str = "/") -> Path:
        """A path inside the host, as seen from the machine (through /proc/PID/root)."""
        return self.host(name).root / path.lstrip("/")

    def exec_count(self, name: str) -> int:
        """Number of exec requests (remote commands) this host's sshd has logged so far."""
        try:
            data = (self.host(name).root / "var/log/sshd.log").read_bytes()
        except FileNotFoundError:
            return 0
        return len(_EXEC_RE.findall(data))

    def ssh_command(self, name: str, cmd: str | None = None) -> list[str]:
        """argv for the machine's OpenSSH client to reach this host with the fleet's key and known_hosts."""
        argv = ["ssh", "-F", str(self.ssh_config_path), self.host(name).name]
        return argv + ([cmd] if cmd is not None else [])

    def connection_data(self, name: str) -> dict:
        """pyinfra 3.10 ssh connector data for this host (strict host key checking against the fleet's file)."""
        host = self.host(name)
        return {
            "ssh_hostname": host.address,
            "ssh_port": host.ssh_port,
            "ssh_user": "root",
            "ssh_key": str(self.key_path),
            "ssh_known_hosts_file": str(self.known_hosts_path),
            "ssh_strict_host_key_checking": "yes",
            "ssh_config_file": str(self.ssh_config_path),
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
            "ssh_forward_agent": False,
        }

    def write_inventory(self, path: Path | str, host_data: dict[str, dict] | None = None,
                        groups: dict[str, list[str]] | None = None) -> Path:
        """Write a pyinfra inventory: ``hosts = [(name, data), ...]`` plus one module-level list per group.

        ``groups`` defaults to the groups given to up()/add().
        """
        host_data = host_data or {}
        groups = self.groups if groups is None else groups
        for name in host_data:
            self.host(name)
        for group, members in groups.items():
            if not group.isidentifier() or group.startswith("_") or group in ("hosts", "all"):
                raise FleetError(f"bad group name {group!r}")
            for name in members:
                self.host(name)
        entries = [(h.name, {**self.connection_data(h.name), **host_data.get(h.name, {})}) for h in self.hosts]
        text = [
            "# pyinfra inventory of the namespace test fleet (generated by tests.fleet; do not edit)",
            "hosts = [\n" + "".join(f"    {entry!r},\n" for entry in entries) + "]",
        ]
        text += [f"{group} = {list(members)!r}" for group, members in groups.items()]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, "\n\n".join(text) + "\n")
        return path

    def status(self) -> dict:
        return {
            "slot": self.slot,
            "state_dir": str(self.state_dir) if self.state_dir else None,
            "hosts": [
                {"name": h.name, "address": h.address, "pid": h.pid, "alive": _proc_start_time(h.pid) is not None}
                for h in self.hosts
            ],
        }


# ---------------------------------------------------------------- teardown on exit / signals


def teardown_all() -> None:
    for fleet in list(_LIVE_FLEETS):
        with contextlib.suppress(Exception):
            fleet.down()


_handlers_installed = False


def install_teardown_handlers() -> None:
    """atexit tears down every live fleet of this process; SIGTERM/SIGINT unwind (KeyboardInterrupt) so
    that fixtures' finalizers run. Idempotent; main thread only."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(teardown_all)

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}: tearing down the test fleet")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
