"""Run a command with the faccessat2 system call answering ENOSYS (x86_64 hosts only).

Why: proot 5.1 (Debian bookworm's) predates faccessat2 and passes it through untranslated, so
inside the emulated root file system ``os.access()`` (glibc 2.36 tries faccessat2 first) looks
the path up on the host: click then calls an existing file "not readable". With faccessat2
refused, glibc (in qemu and in the guest) falls back to faccessat, which proot translates.

A seccomp filter (installed with prctl, no library needed) is inherited by proot, qemu and every
process under them. ERRNO wins over proot's own TRACE filter (seccomp's precedence).

Usage: no_faccessat2.py COMMAND [ARG...]
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
AUDIT_ARCH_X86_64 = 0xC000003E
NR_FACCESSAT2 = 439  # the same number on every architecture (a 2020 system call)
ENOSYS = 38
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
# classic BPF: ld/jeq/ret opcodes
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def install() -> None:
    """Install the filter in this process (inherited across fork and exec)."""
    program = b"".join([
        _insn(LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _insn(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        _insn(LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        _insn(JEQ_K, 0, 1, NR_FACCESSAT2),
        _insn(RET_K, 0, 0, RET_ERRNO | ENOSYS),
        _insn(RET_K, 0, 0, RET_ALLOW),
    ])
    count = len(program) // 8
    buffer = ctypes.create_string_buffer(program)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(count, ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main() -> None:
    """Install the filter (on x86_64) and exec the command."""
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if platform.machine() == "x86_64":
        install()
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
