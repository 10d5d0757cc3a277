#!/usr/bin/env bash
# make pi-check: prove the robot install on its own platform, in CI.
#
# Builds (once, cached) a Debian 12 "bookworm" arm64 root from Debian's archive, the base of
# Raspberry Pi OS Bookworm (Python 3.11, numpy 1.24), runs it under qemu-user-static, and in
# it: the real installer (systemd/install.sh --no-start), the numpy-ABI check against a Debian
# module built for numpy 1.x, the camera driver through a picamera2 stand-in, hw-check --sim,
# the daemon on the sim (READY, status, autonomous laps, estop, SIGTERM), ONNX/LiteRT policy
# steps, the torch-free tests, and an aarch64 resolution of the `train` extra.
# See docs/install-pi.md.  Needs root (chroot, mounts, binfmt_misc).
#
# Environment:
#   PI_CHECK_CACHE    cache directory (default /var/cache/continuon-pi-check): the root
#                     tarball, keyed by a hash of what goes into it, and pip's download cache
#   PI_CHECK_MIRROR   Debian mirror (default http://deb.debian.org/debian)
#   PI_CHECK_KEEP=1   keep the unpacked root under /var/tmp after the run (for debugging)
#   PI_CHECK_TESTS=0  skip the test suite inside the root
#   HOST_PYTHON       python with torch for making the models (default .venv/bin/python)
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/../.." && pwd)
CACHE=${PI_CHECK_CACHE:-/var/cache/continuon-pi-check}
MIRROR=${PI_CHECK_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
HOST_PYTHON=${HOST_PYTHON:-$REPO/.venv/bin/python}
# What Pi OS Bookworm has that the robot uses, plus what the check itself needs.
#   python3-pywt: a small Debian arm64 extension module compiled against numpy 1.x (the ABI
#   check); systemd: systemd-analyze verify in the installer; passwd: useradd/groupadd.
PACKAGES=(python3 python3-venv python3-numpy python3-pywt ca-certificates passwd systemd procps)
# Manual pages, docs and translations are never read in CI: not unpacking them saves time.
MMDEBSTRAP_OPTS=(
    --arch=arm64 --variant=apt
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
)
ROOT_FORMAT=2 # bump when the recipe changes in a way the hash below does not see

log() { printf '[pi-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() {
    log "FAIL: $*"
    exit 1
}

((EUID == 0)) || die "needs root (chroot, mounts, binfmt_misc): sudo make pi-check"
T_START=$(date +%s)

# --- host tools and binfmt_misc -------------------------------------------------------------
ensure_host_tools() {
    local missing=()
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    [[ -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P || -x /usr/bin/qemu-aarch64-static ]] ||
        missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    # F (fix-binary) flag: the interpreter is opened now, so the root needs no copy of it.
    [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
        die "binfmt_misc handler qemu-aarch64 is not enabled"
}

# --- the root tarball (cached) ---------------------------------------------------------------
root_tarball() {
    local key tar
    key=$(printf '%s\n' "$ROOT_FORMAT" "$SUITE" "$MIRROR" "${PACKAGES[@]}" "${MMDEBSTRAP_OPTS[@]}" |
        sha256sum | cut -c1-16)
    tar=$CACHE/root-$SUITE-arm64-$key.tar
    if [[ -s $tar ]]; then
        log "root: cached $tar ($(du -h "$tar" | cut -f1))"
    else
        log "root: building $SUITE arm64 with mmdebstrap (emulated maintainer scripts)"
        local t0=$SECONDS
        mkdir -p "$CACHE"
        nice -n 10 mmdebstrap --quiet --format=tar "${MMDEBSTRAP_OPTS[@]}" \
            --include="$(
                IFS=,
                echo "${PACKAGES[*]}"
            )" "$SUITE" "$tar.partial" "$MIRROR"
        mv "$tar.partial" "$tar"
        log "root: built in $((SECONDS - t0)) s ($(du -h "$tar" | cut -f1))"
        # older roots are never used again
        find "$CACHE" -maxdepth 1 -name "root-$SUITE-arm64-*.tar" ! -path "$tar" -delete
    fi
    ROOT_TAR=$tar
}

# --- mounts, always undone -------------------------------------------------------------------
MOUNTS=()
WORK=""
cleanup() {
    local rc=$?
    set +e
    if [[ -n $WORK && -d $WORK/root ]]; then
        # processes still running in the root (a daemon a failed step left behind), by id
        local pid
        for pid in $(ls /proc | grep -E '^[0-9]+$'); do
            [[ $(readlink "/proc/$pid/root" 2>/dev/null) == "$WORK/root" ]] && kill -KILL "$pid"
        done
    fi
    # the figures and logs, also (above all) from a failed run
    if [[ -n $WORK && -d $WORK/root/opt/pi-check/out ]]; then
        mkdir -p "$REPO/var/pi-check"
        cp -r "$WORK/root/opt/pi-check/out/." "$REPO/var/pi-check/"
        log "figures and logs in var/pi-check/"
    fi
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" || umount -l "${MOUNTS[i]}"
    done
    if [[ -n $WORK ]]; then
        if grep -q " $WORK/" /proc/mounts; then
            log "mounts left under $WORK: not deleting it"
        elif [[ ${PI_CHECK_KEEP:-0} == 1 ]]; then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    log "finished in $(($(date +%s) - T_START)) s, exit $rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bind() { # bind SRC DST [ro]
    mount --bind "$1" "$2"
    MOUNTS+=("$2")
    if [[ ${3:-} == ro ]]; then mount -o remount,bind,ro "$2"; fi
}

prepare_root() {
    WORK=$(mktemp -d /var/tmp/continuon-pi-check.XXXXXX)
    ROOT=$WORK/root
    mkdir -p "$ROOT"
    local t0=$SECONDS
    tar -xf "$ROOT_TAR" -C "$ROOT"
    log "root: unpacked in $((SECONDS - t0)) s"
    mount -t proc proc "$ROOT/proc"
    MOUNTS+=("$ROOT/proc")
    mount -t sysfs sysfs "$ROOT/sys"
    MOUNTS+=("$ROOT/sys")
    bind /dev "$ROOT/dev"
    bind /dev/pts "$ROOT/dev/pts"
    mount -t tmpfs tmpfs "$ROOT/dev/shm"
    MOUNTS+=("$ROOT/dev/shm")
    # qemu-user passes the host's x86 /proc/cpuinfo through; onnxruntime's cpuinfo parser
    # segfaults on it.  A Pi 5's (Cortex-A76) instead.
    bind "$HERE/cpuinfo-arm64" "$ROOT/proc/cpuinfo" ro
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    # pip inside the root is configured like the host's: same CA bundle (the host may add
    # its own CAs), timeout and index; a download cache shared between runs.
    local ca=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}
    install -m 0644 "$ca" "$ROOT/etc/ssl/certs/pi-check-host-ca.crt"
    {
        echo "[global]"
        echo "cert = /etc/ssl/certs/pi-check-host-ca.crt"
        echo "timeout = ${PIP_DEFAULT_TIMEOUT:-120}"
        echo "disable-pip-version-check = true"
        # file:// indexes and find-links are the host's x86 wheels: not useful on arm64.
        [[ ${PIP_INDEX_URL:-} != http* ]] || echo "index-url = $PIP_INDEX_URL"
    } >"$ROOT/etc/pip.conf"
    mkdir -p "$CACHE/pip" "$ROOT/root/.cache/pip"
    bind "$CACHE/pip" "$ROOT/root/.cache/pip"
    # The project as a robot builder gets it: the working tree's files (tracked and new).
    mkdir -p "$ROOT/opt/src/continuon-brain"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
        grep -zv -E '^(\.venv|\.venv-xla)$' | tar --null -T - -cf -) |
        tar -xf - -C "$ROOT/opt/src/continuon-brain"
}

# --- models (host torch) ---------------------------------------------------------------------
make_models() {
    local out=$ROOT/opt/pi-check/models
    mkdir -p "$out"
    [[ -x $HOST_PYTHON ]] || die "no host python with torch at $HOST_PYTHON (make venv)"
    PYTHONPATH=$REPO nice -n 5 "$HOST_PYTHON" "$HERE/make_models.py" "$out" 2>"$WORK/make_models.log" ||
        {
            tail -20 "$WORK/make_models.log"
            die "making the policy models on the host failed"
        }
}

ensure_host_tools
root_tarball
prepare_root
make_models
log "inside the arm64 root (qemu-user-static): $(chroot "$ROOT" uname -m)"
mkdir -p "$ROOT/opt/pi-check/out"
nice -n 10 chroot "$ROOT" /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb \
    CONTINUON_EMULATED=1 PI_CHECK_TESTS="${PI_CHECK_TESTS:-1}" \
    bash /opt/src/continuon-brain/tools/pi-check/inside.sh
log "PASS"
cat "$ROOT/opt/pi-check/out/summary.txt"
