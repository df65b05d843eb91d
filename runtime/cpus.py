"""How many CPUs this process may actually use.

A container limited to two CPUs on a 64-core host reports 64 from ``os.cpu_count()``;
sizing thread pools from that oversubscribes the quota and runs several times slower.
"""

from __future__ import annotations

import logging
import math
import os
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


def warn_missing_cpu_flags(required: Iterable[str], artefact: str) -> tuple[str, ...]:
    """Log one warning when an artefact needs CPU flags this CPU lacks.

    One warning per call: :meth:`Embedder.load` calls it once per model it loads (no
    process-wide memory of what was already said).

    Returns the missing flags (empty when the CPU has them all or cannot be read).
    """
    available = cpu_flags()
    missing = tuple(sorted(flag for flag in required if flag not in available)) if available else ()
    if missing:
        logger.warning(
            "%s was built for CPU features this CPU lacks (%s); it will run, but may be slow "
            "or, for int8 without VNNI, less accurate. Export it on this machine for a matching recipe.",
            artefact, ", ".join(missing),
        )
    return missing
