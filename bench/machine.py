"""The machine a benchmark runs on and what a process takes of it: CPU facts, CPU time, memory.

One home for these readings, so every benchmark and study reports them alike: the CPU model
and the flags that decide int8 and fp32 kernels (the flags as the runtime reads them,
:func:`embedrt.runtime.cpus.cpu_flags`), stolen CPU time on a shared machine, a process's CPU
seconds, and its resident set size, now or at its peak. Linux ``/proc`` first; where a reading
does not exist the functions say so (None, or the fallback each names). Importing this module
loads nothing but the standard library: a cold-start child measures its own peak with it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (``platform.processor()`` or the machine type where none is listed)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def cpu_info() -> dict[str, Any]:
    """CPU model name and the presence of the flags that decide int8 and fp32 kernels."""
    # Imported here: the cold-start child imports this module and must not load onnxruntime.
    from embedrt.runtime.cpus import cpu_flags

    flags = cpu_flags()
    return {"model": cpu_model(), "flags": {flag: flag in flags for flag in CPU_FLAGS}}


def cpu_name() -> str:
    """The CPU's model name and this machine's CPU count as one label, e.g. ``AMD EPYC x2``."""
    return f"{cpu_model()} x{os.cpu_count()}"


def cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs since boot, or None where /proc/stat is missing.

    Steal is time a virtual machine's CPUs were ready but the hypervisor ran someone else:
    on a shared machine it is the noise that slows every system in a run.
    """
    try:
        fields = stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return values[7], sum(values)


def steal_percent(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """Share of CPU time stolen between two :func:`cpu_times` readings, in percent."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return round(100 * (end[0] - start[0]) / (end[1] - start[1]), 2)


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process, all its threads (this process when ``pid`` is None)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib() -> int:
    """This process's peak resident set size in KiB.

    ``VmHWM`` restarts at exec; ``ru_maxrss`` does not (a child forked from a large
    parent reports the parent's peak), so it is only the fallback.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB, to 0.1 (:func:`peak_rss_kib`)."""
    return round(peak_rss_kib() / 1024, 1)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process now, in bytes (Linux /proc).

    Raises:
        RuntimeError: its status lists no ``VmRSS`` (a kernel thread, or a process gone).
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
