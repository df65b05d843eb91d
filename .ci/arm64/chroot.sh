#!/usr/bin/env bash
# Run one command on emulated arm64 in a chroot: the same interface as exec.sh, for root.
#
#   EMBEDRT_ARM64_ROOTFS=DIR [EMBEDRT_ARM64_CPU=cortex-a76] [EMBEDRT_ARM64_BIND="dir ..."] \
#       [EMBEDRT_ARM64_WORKDIR=dir] chroot.sh COMMAND [ARG...]
#
# Why, next to exec.sh: proot 5.1 corrupts multi-threaded guests now and then (measured:
# 2 of 6 runs of tests/arm64/vectors.py died with SIGSEGV or a glibc heap assertion under
# proot, 0 of 6 under plain qemu), and the tests start arm64 subprocesses, which plain qemu
# (-L) cannot exec without a binfmt_misc handler. As root: qemu-aarch64 is registered with
# binfmt_misc (Debian's qemu-user-static entry, fix_binary, from /usr/lib/binfmt.d or via
# update-binfmts; left registered: it only affects aarch64 binaries), and the chroot's mounts
# (/proc with the ARM cpuinfo bound over /proc/cpuinfo, /dev, /sys, the bound folders at the
# same paths) live in a private mount namespace (unshare -m): nothing is mounted on the host
# after the command ends.
# Exit status 3 with one line on stderr when this cannot be set up (the caller falls back).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
rootfs=${EMBEDRT_ARM64_ROOTFS:?EMBEDRT_ARM64_ROOTFS: the arm64 root file system (rootfs.sh prints it)}
cpu=${EMBEDRT_ARM64_CPU:-cortex-a76}
cpuinfo=$HERE/cpuinfo/$cpu
[ -f "$cpuinfo" ] || { echo "EMBEDRT_ARM64_CPU=$cpu: no $cpuinfo" >&2; exit 2; }

if [ "${1:-}" = --setup ]; then  # register the binfmt handler; exit 3 where impossible
    [ "$(id -u)" = 0 ] || { echo "not root" >&2; exit 3; }
    command -v unshare > /dev/null || { echo "unshare missing" >&2; exit 3; }
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2> /dev/null \
            || { echo "cannot mount binfmt_misc" >&2; exit 3; }
    fi
    # Debian 12's qemu-user-static ships the entry for systemd-binfmt (which a container does
    # not run) and only recommends binfmt-support: write the entry to the kernel directly.
    conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        if [ -f "$conf" ]; then
            grep -v '^#' "$conf" > /proc/sys/fs/binfmt_misc/register 2> /dev/null \
                || { echo "registering $conf with binfmt_misc failed" >&2; exit 3; }
        else
            update-binfmts --enable qemu-aarch64 > /dev/null 2>&1 \
                || { echo "no $conf, and update-binfmts --enable qemu-aarch64 failed" >&2; exit 3; }
        fi
    fi
    grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || { echo "the qemu-aarch64 binfmt handler lacks the F (fix binary) flag" >&2; exit 3; }
    exit 0
fi

env_keep=(PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 QEMU_CPU="$cpu")
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$ca" ] && env_keep+=(PIP_CERT="$ca" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONFIG_FILE=/dev/null)
while IFS= read -r name; do
    env_keep+=("$name=${!name}")
done < <(compgen -e | grep -E '^(EMBEDRT_|HF_|PYTEST_|OMP_)' | grep -v '^EMBEDRT_ARM64_' || true)

# Everything below runs in the private mount namespace.
read -r -d '' inside <<'EOF' || true
set -eu
rootfs=$1 cpuinfo=$2 workdir=$3 ca=$4 binds=$5; shift 5
mount -t proc proc "$rootfs/proc"
mount --bind "$cpuinfo" "$rootfs/proc/cpuinfo"
for dir in /dev /sys; do mount --rbind "$dir" "$rootfs$dir"; done
touch "$rootfs/etc/resolv.conf"; mount --bind /etc/resolv.conf "$rootfs/etc/resolv.conf"
if [ -f "$ca" ]; then
    mkdir -p "$rootfs$(dirname "$ca")"; touch "$rootfs$ca"; mount --bind "$ca" "$rootfs$ca"
fi
for dir in $binds; do mkdir -p "$rootfs$dir"; mount --bind "$dir" "$rootfs$dir"; done
exec /usr/sbin/chroot "$rootfs" /bin/sh -c 'cd "$0" && "$@"; status=$?; [ $status -gt 128 ] && echo "arm64: $1 died of signal $((status - 128))" >&2; exit $status' "$workdir" "$@"
EOF
exec env -i "${env_keep[@]}" unshare -m --propagation private \
    /bin/sh -c "$inside" inside "$rootfs" "$cpuinfo" "${EMBEDRT_ARM64_WORKDIR:-/}" "$ca" \
    "${EMBEDRT_ARM64_BIND:-}" "$@"
