#!/usr/bin/env bash
# Run one command on emulated arm64: proot + qemu-aarch64-static in the root file system
# $EMBEDRT_ARM64_ROOTFS (made by rootfs.sh), as the current user, with no privilege.
#
#   EMBEDRT_ARM64_ROOTFS=DIR [EMBEDRT_ARM64_CPU=cortex-a76] [EMBEDRT_ARM64_BIND="dir ..."] \
#       exec.sh COMMAND [ARG...]
#
# Why proot rather than `qemu-aarch64-static -L DIR`: the tests start subprocesses
# (sys.executable, bash); without a binfmt_misc registration (privileged) only proot's -q turns
# each execve of an arm64 binary into a qemu call.
#
# faccessat2: proot 5.1 does not translate it; no_faccessat2.py makes it fail with ENOSYS so
# glibc falls back to faccessat (else os.access() looks paths up on the host).
#
# /proc/cpuinfo: under qemu 7.2 user mode the guest reads the host's x86 /proc/cpuinfo, and
# `import onnxruntime` (its cpuinfo library) then segfaults. proot binds an ARM cpuinfo from
# cpuinfo/ over it (no mount namespace needed); QEMU_CPU makes the emulated CPU (and so the
# HWCAP bits onnxruntime reads for dot-product etc.) match that file.
#
# The environment is cleared: PATH, HOME, LANG, QEMU_CPU, the proxy CA bundle pip needs
# (PIP_CERT, the host's file bound at the same path), and the EMBEDRT_*, HF_*, PYTEST_* and
# OMP_* variables of the caller pass through.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
rootfs=${EMBEDRT_ARM64_ROOTFS:?EMBEDRT_ARM64_ROOTFS: the arm64 root file system (rootfs.sh prints it)}
cpu=${EMBEDRT_ARM64_CPU:-cortex-a76}
cpuinfo=$HERE/cpuinfo/$cpu
if [ ! -f "$cpuinfo" ]; then
    echo "EMBEDRT_ARM64_CPU=$cpu: no ARM cpuinfo for it in $HERE/cpuinfo (have: $(ls "$HERE/cpuinfo"))" >&2
    exit 2
fi

binds=(-b /dev -b /proc -b /sys -b "$cpuinfo:/proc/cpuinfo" -b /etc/resolv.conf)
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$ca" ] && binds+=(-b "$ca")
for dir in ${EMBEDRT_ARM64_BIND:-}; do
    binds+=(-b "$dir")
done

env_keep=(PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 QEMU_CPU="$cpu"
          PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONFIG_FILE=/dev/null)
[ -f "$ca" ] && env_keep+=(PIP_CERT="$ca")
while IFS= read -r name; do
    env_keep+=("$name=${!name}")
done < <(compgen -e | grep -E '^(EMBEDRT_|HF_|PYTEST_|OMP_)' | grep -v '^EMBEDRT_ARM64_' || true)

# The command runs under the guest's sh, which reports its exit status: proot 5.1 exits 0 when
# its first process dies of a signal (seen: pytest aborted under emulation, proot said 0).
guard='"$@"; status=$?; [ $status -gt 128 ] && echo "arm64: $1 died of signal $((status - 128))" >&2; exit $status'
exec env -i "${env_keep[@]}" python3 "$HERE/no_faccessat2.py" \
    proot -q qemu-aarch64-static -r "$rootfs" -w "${EMBEDRT_ARM64_WORKDIR:-/}" "${binds[@]}" \
    /bin/sh -c "$guard" arm64 "$@"
