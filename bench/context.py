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
    "sentence-transformers", "fastembed", "matplotlib",
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
