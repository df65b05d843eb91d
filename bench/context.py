"""Where a benchmark ran: CPU model and flags, thread budget, library versions, date, command."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
LIBRARIES = (
    "embedrt", "numpy", "onnxruntime", "tokenizers", "torch", "transformers",
    "sentence-transformers", "fastembed", "matplotlib", "openvino", "nncf", "optimum",
)


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model name and the presence of the flags that decide int8 and fp32 kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break  # every processor lists the same; the model name comes first
    return {"model": model, "flags": {flag: flag in flags for flag in CPU_FLAGS}}


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


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a run may use (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_context(threads: int, usable_cpus: int, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Everything a reader needs to judge the figures: machine, threads, versions, date, command."""
    command = list(argv if argv is not None else sys.argv)
    if command and command[0].endswith(("embedrt", "__main__.py")):
        command[0] = "embedrt"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(command),
        "cpu": cpu_info(),
        "platform": platform.platform(),
        "threads": threads,
        "usable_cpus": usable_cpus,
        "versions": library_versions(),
        # Other work on a shared machine slows every system; the ratios are what to compare.
        "load_average_start": list(os.getloadavg()),
    }
