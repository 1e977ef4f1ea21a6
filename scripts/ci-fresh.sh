#!/usr/bin/env bash
# The README's two commands (backup-local.sh, then test.sh) on a brand-new Debian 12 root, from a fresh clone
# of this repository's HEAD: what CI runs (.ci/run), and what a developer runs before stopping. Nothing of this
# machine reaches the root but its package-registry settings (apt sources and apt.conf.d snippets, pip
# configuration, CA certificates, resolv.conf), which a fresh machine of this kind has too: whatever else the
# project needs, its own scripts must install. As root. Usage: bash scripts/ci-fresh.sh [pytest args...]
#
# The base root (mmdebstrap --variant=important) is cached per month under $PBK_CI_CACHE (default
# /var/cache/pyinfra-backup-ci); everything from scripts/install.sh on runs from zero every time.
# The root lives in its own mount and PID namespace: when this script ends, however it ends, every mount and
# process of it goes with them; the test fleet inside uses its own family of names (pbc-, 10.214/16), so it
# never touches a fleet of this machine's, and what it leaves in the machine's network (a bridge) is removed here.
set -euo pipefail
{  # read whole before it runs: editing this file during a run cannot change the run
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "ci-fresh: run as root" >&2; exit 2; }

SRC=$PWD
REV=$(git rev-parse HEAD)
CACHE=${PBK_CI_CACHE:-/var/cache/pyinfra-backup-ci}
BASE=$CACHE/bookworm-important-$(date -u +%Y-%m).tar
FAMILY=pbc
export PBK_FLEET_FAMILY=$FAMILY:214
WORK=$(mktemp -d /var/tmp/pbk-ci-fresh.XXXXXX)
ROOT=$WORK/root
inner_pid=

say() { printf 'ci-fresh: %s\n' "$*"; }

leftovers() {  # what of the fresh root is still on the machine: processes, mounts, links
    local pid
    for pid in /proc/[0-9]*; do
        [[ "$(readlink "$pid/root" 2>/dev/null)" == "$ROOT"* ]] && echo "process ${pid#/proc/}"
    done
    grep -F " $WORK" /proc/self/mountinfo | awk '{print "mount " $5}'
    ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep "^$FAMILY-" | sed 's/^/link /'
    true
}

teardown() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$inner_pid" ] && kill -0 "$inner_pid" 2>/dev/null; then
        kill -TERM "$inner_pid" 2>/dev/null || true  # unshare --kill-child: its PID namespace dies with it
        for _ in $(seq 50); do kill -0 "$inner_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$inner_pid" 2>/dev/null || true
        wait "$inner_pid" 2>/dev/null || true
    fi
    ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep "^$FAMILY-" |
        xargs -r -n1 ip link del 2>/dev/null || true
    local left
    left=$(leftovers)
    if [ -n "$left" ]; then
        say "LEFT ON THE MACHINE (not removing $WORK):"; echo "$left"; rc=1
    else
        rm -rf --one-file-system "$WORK"
    fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

start=$SECONDS
if ! command -v mmdebstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

if [ ! -s "$BASE" ]; then
    say "building the base root $BASE"
    mkdir -p "$CACHE"
    sources=(/etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list)
    [ -s /etc/apt/sources.list ] && sources+=(/etc/apt/sources.list)
    aptopts=()
    for f in /etc/apt/apt.conf.d/*; do aptopts+=("--aptopt=$f"); done
    existing=()
    for f in "${sources[@]}"; do [ -s "$f" ] && existing+=("$f"); done
    mmdebstrap -q --variant=important --include=git,ca-certificates "${aptopts[@]}" \
        bookworm "$BASE.tmp.tar" "${existing[@]}"
    mv "$BASE.tmp.tar" "$BASE"
    find "$CACHE" -name 'bookworm-important-*.tar' ! -path "$BASE" -delete
fi
base_s=$((SECONDS - start))

mkdir -p "$ROOT"
tar -C "$ROOT" -xpf "$BASE"
# The package-registry settings of this machine, as a fresh machine of this kind has them.
rm -rf "$ROOT/etc/apt/sources.list.d" "$ROOT/etc/apt/apt.conf.d"
mkdir -p "$ROOT/etc/apt/sources.list.d"
cp -a /etc/apt/apt.conf.d "$ROOT/etc/apt/"
find /etc/apt/sources.list.d -maxdepth 1 \( -name '*.list' -o -name '*.sources' \) -exec cp -a {} "$ROOT/etc/apt/sources.list.d/" \;
[ -e /etc/apt/sources.list ] && cp -a /etc/apt/sources.list "$ROOT/etc/apt/"
for f in /etc/pip.conf /etc/xdg/pip /root/.config/pip /root/.pip /usr/local/share/ca-certificates \
         /etc/ssl/certs/ca-certificates.crt; do
    [ -e "$f" ] || continue
    mkdir -p "$ROOT$(dirname "$f")"
    rm -rf "${ROOT:?}$f"
    cp -aL "$f" "$ROOT$f"
done
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
git clone -q --no-local "$SRC" "$ROOT/work/pyinfra-backup"
git -C "$ROOT/work/pyinfra-backup" checkout -q --detach "$REV"
say "root ready in $((SECONDS - start)) s (base root $base_s s), $REV"

# Inside: the root bind-mounted on itself (the fleet's `unshare --propagation` needs / to be a mount point),
# a fresh /proc (its own PID namespace), /sys and /dev bound, fresh tmpfs on /run and /tmp.
inner='
set -eu
R=$1; shift
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
exec chroot "$R" /bin/bash -c '\''
set -eu
cd /work/pyinfra-backup
t0=$SECONDS
bash scripts/backup-local.sh
t1=$SECONDS
echo "ci-fresh: backup-local.sh passed in $((t1 - t0)) s (install included)"
again=$(bash scripts/backup-local.sh 2>&1)  # pyinfra reports on stderr
if ! grep -q "No changes" <<<"$again" || grep -q "\] Success" <<<"$again"; then
    echo "$again"; echo "ci-fresh: backup-local.sh again changed something"; exit 1
fi
echo "ci-fresh: backup-local.sh again: No changes"
set +e -o pipefail
bash scripts/test.sh "$@" 2>&1 | tee /run/ci-fresh-test.log
rc=$?
echo "ci-fresh: test.sh exited $rc after $((SECONDS - t1)) s"
grep -E "^(=+ )?[0-9]+ (passed|failed)|^[0-9]+ (passed|failed|error)" /run/ci-fresh-test.log | tail -1 > /run/ci-fresh-summary
cp /run/ci-fresh-summary /work/ci-fresh-summary
exit $rc
'\'' ci-fresh "$@"
'
unshare --mount --propagation private --pid --fork --kill-child -- \
    env HOME=/root CI="${CI:-}" bash -c "$inner" ci-fresh "$ROOT" "$@" </dev/null &
inner_pid=$!
set +e
wait "$inner_pid"
rc=$?
set -e
inner_pid=
say "whole run $((SECONDS - start)) s, exit $rc"
# pytest's closing line last, where CI reads it
[ -s "$ROOT/work/ci-fresh-summary" ] && cat "$ROOT/work/ci-fresh-summary"
exit "$rc"
}
