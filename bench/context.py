"""Where a benchmark ran: CPU model and flags, thread budget, library versions, date, command.

The machine's readings themselves (CPU, CPU time, memory) are in :mod:`.machine`.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from .machine import cpu_info

LIBRARIES = (
    "embedrt", "numpy", "onnxruntime", "tokenizers", "torch", "transformers",
    "sentence-transformers", "fastembed", "matplotlib", "openvino", "nncf", "optimum",
)


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
