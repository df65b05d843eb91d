"""How many CPUs this process may actually use, and whether they suit an artefact.

A container limited to two CPUs on a 64-core host reports 64 from ``os.cpu_count()``;
sizing thread pools from that oversubscribes the quota and runs several times slower.
"""

from __future__ import annotations

import logging
import math
import os
import platform
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_quota() -> float | None:
    """The cgroup CPU quota in CPUs, or None when there is none (v2, then v1)."""
    try:
        fields = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_flags() -> frozenset[str]:
    """Instruction-set flags of this CPU (x86 ``flags`` or ARM ``Features`` in /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


# The x86 flags export writes into requires_cpu_flags (export.quantize.recipe.TARGET_ISAS).
# An int8 dot product (either VNNI) is what matters: without one, onnxruntime's u8 x s8 kernels
# add pairs of products in 16 bits (vpmaddubsw), which saturates. The vector widths only pick
# among kernels that compute the same sums (and the narrower target's export writes the same
# graph), so a CPU lacking them needs nothing else.
_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
_WIDTH_FLAGS = frozenset({"avx512f", "avx512bw", "avx2"})
_X86_FLAGS = _DOT_PRODUCT_FLAGS | _WIDTH_FLAGS

_NO_VNNI = (
    "%s was quantised for CPUs with an int8 dot product (avx512_vnni or avx_vnni), which "
    "this CPU lacks: onnxruntime's u8 x s8 kernels then add pairs of products in "
    "16 bits, which can saturate (less accurate embeddings, onnxruntime#6004) and run barely "
    "faster than fp32 (bert-base int8: 1.08x without VNNI, 1.59x with, onnxruntime#6695). "
    "Use an fp32 artefact, or an int8 one exported with --isa avx2 (u8 weights: no "
    "saturation); exporting needs the [export] extra (torch) and can run on any x86 machine."
)
_UNKNOWN = (
    "%s was built for CPU features this CPU lacks (%s); it will run on onnxruntime's kernels "
    "for older CPUs, whose speed and accuracy embedrt has not measured."
)


def is_arm() -> bool:
    """Whether this is an ARM CPU (aarch64 or 32-bit ARM), by the machine name."""
    machine = platform.machine().lower()
    return machine in ("arm64", "aarch64") or machine.startswith("arm")


def warn_missing_cpu_flags(required: Iterable[str], artefact: str) -> tuple[str, ...]:
    """Log one warning when this CPU lacks a feature that changes the artefact's results or speed.

    - On ARM the x86 flags are moot: onnxruntime's ARM kernels (NEON, with or without the dot
      product) run the same int8 graph without 16-bit saturation (one int8 file serves x86
      with VNNI and arm64; .ci/arm64/run checks its vectors against x86's).
    - On x86, an artefact that needs VNNI warns when the CPU has neither avx512_vnni nor
      avx_vnni, with the measured consequence and the fix; missing vector widths alone
      (avx512f, avx512bw) change nothing the user could do better and are not reported.
    - Any other missing flag gets a plain warning naming it.

    One warning per call: :meth:`Embedder.load` calls it once per model it loads (no
    process-wide memory of what was already said).

    Returns the missing flags warned about (empty when none, or when the CPU cannot be read).
    """
    available = cpu_flags()
    if not available:
        return ()
    wanted = set(required)
    if is_arm():
        wanted -= _X86_FLAGS
    elif wanted & _DOT_PRODUCT_FLAGS:
        if available & _DOT_PRODUCT_FLAGS:
            wanted -= _X86_FLAGS
        else:
            missing = tuple(sorted(wanted & _DOT_PRODUCT_FLAGS))
            logger.warning(_NO_VNNI, artefact)
            return missing
    else:
        wanted -= {"avx512f", "avx512bw"}  # u8-weight graphs: the avx2 target writes the same
    missing = tuple(sorted(flag for flag in wanted if flag not in available))
    if missing:
        logger.warning(_UNKNOWN, artefact, ", ".join(missing))
    return missing
