#!/usr/bin/env bash
# Build, or reuse from the cache, a Debian bookworm arm64 root file system with Python 3.11 and
# a virtual environment (/opt/venv) holding the requirements listed in the file given as $1.
# Prints the root file system's path on stdout; progress goes to stderr.
#
# The cache: $EMBEDRT_ARM64_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/embedrt/arm64, one
# directory per key; the key hashes the requirement list, this script and the Debian suite, so
# changing a pin rebuilds it. A finished build is moved into place atomically (a killed build
# leaves only a *.partial-* directory, removed by the next build); older keys are removed.
#
# No privileged step: no binfmt_misc registration, no mount, no chroot. The first stage of
# debootstrap downloads and unpacks the essential packages; the rest (python3 and its
# libraries) is unpacked with dpkg-deb on the host instead of debootstrap's second stage,
# which runs every maintainer script under emulation (8.5 min here against 5 s). Nothing
# python needs comes from a maintainer script except /etc/passwd and /etc/group, copied from
# base-passwd's masters. Commands inside run under proot + qemu-aarch64-static (see exec.sh).
set -euo pipefail

REQUIREMENTS=${1:?usage: rootfs.sh REQUIREMENTS_FILE}
HERE=$(cd "$(dirname "$0")" && pwd)
SUITE=bookworm
MIRROR=${EMBEDRT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${EMBEDRT_ARM64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/embedrt/arm64}

key=$( { cat "$REQUIREMENTS"; cat "$0"; echo "$SUITE"; } | sha256sum | cut -c1-16)
target=$CACHE/$key
if [ -f "$target/.complete" ]; then
    echo "arm64: reusing the root file system in $target" >&2
    echo "$target/rootfs"
    exit 0
fi

mkdir -p "$CACHE"
rm -rf "$CACHE"/*.partial-*
partial=$CACHE/$key.partial-$$
trap 'rm -rf "$partial"' EXIT
rootfs=$partial/rootfs
mkdir -p "$rootfs"
started=$(date +%s)

echo "arm64: debootstrap (first stage) of Debian $SUITE into $partial" >&2
debootstrap_cmd=(debootstrap --foreign --arch=arm64 --variant=minbase
                 --include=python3,python3-venv "$SUITE" "$rootfs" "$MIRROR")
if [ "$(id -u)" = 0 ]; then
    "${debootstrap_cmd[@]}" > "$partial/debootstrap.log" 2>&1
else
    # debootstrap insists on uid 0 and chowns what it unpacks: proot -0 fakes both.
    proot -0 "${debootstrap_cmd[@]}" > "$partial/debootstrap.log" 2>&1
fi || { tail -20 "$partial/debootstrap.log" >&2; exit 1; }

echo "arm64: unpacking the remaining packages on the host" >&2
for deb in "$rootfs"/var/cache/apt/archives/*.deb; do
    dpkg-deb -x "$deb" "$rootfs"
done
rm -f "$rootfs"/var/cache/apt/archives/*.deb
cp "$rootfs/usr/share/base-passwd/passwd.master" "$rootfs/etc/passwd"
cp "$rootfs/usr/share/base-passwd/group.master" "$rootfs/etc/group"
# debootstrap makes /proc a symlink to the host's /proc when it detects a container; proot
# needs a directory to bind /proc (and the ARM cpuinfo over it) onto.
rm -rf "$rootfs/proc"
mkdir -p "$rootfs/proc" "$rootfs/opt"

echo "arm64: python -m venv /opt/venv, pip install -r $REQUIREMENTS (emulated)" >&2
cp "$REQUIREMENTS" "$rootfs/opt/requirements.txt"
EMBEDRT_ARM64_ROOTFS=$rootfs "$HERE/exec.sh" python3 -m venv /opt/venv
EMBEDRT_ARM64_ROOTFS=$rootfs "$HERE/exec.sh" /opt/venv/bin/pip install --quiet --progress-bar off \
    -r /opt/requirements.txt

touch "$partial/.complete"
rm -rf "$target"
mv "$partial" "$target"
trap - EXIT
for old in "$CACHE"/*; do
    [ "$old" = "$target" ] || rm -rf "$old"
done
echo "arm64: root file system ready in $(( $(date +%s) - started )) s: $target" >&2
echo "$target/rootfs"
