"""Reading onnxruntime's profiler output: kernel time per operator type and per node.

With ``SessionOptions.enable_profiling`` onnxruntime writes a Chrome-trace JSON list: one
``Session``/``model_run`` event per ``run`` call and one ``Node`` event per kernel executed,
named ``<node>_kernel_time`` with the op type in ``args.op_name``. Times are microseconds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedrt.runtime.errors import EmbedrtError

KERNEL_SUFFIX = "_kernel_time"


class TraceError(EmbedrtError, ValueError):
    """A profiler file is not the trace onnxruntime writes, or holds fewer runs than expected."""


@dataclass(frozen=True)
class KernelTimes:
    """Kernel time of the runs kept from one trace.

    Attributes:
        runs: how many ``run`` calls were kept.
        run_us: wall time of those calls (``model_run`` events), microseconds.
        by_op: op type -> kernel microseconds.
        by_node: node name -> (op type, kernel microseconds).
    """

    runs: int
    run_us: float
    by_op: dict[str, float]
    by_node: dict[str, tuple[str, float]]

    @property
    def kernel_us(self) -> float:
        """Kernel time summed over every node."""
        return sum(self.by_op.values())

    def op_shares(self) -> list[dict[str, Any]]:
        """Op types by falling kernel time: microseconds per run and share of kernel time."""
        total = self.kernel_us or 1.0
        return [{"op": op, "us_per_run": us / max(self.runs, 1), "share": us / total}
                for op, us in sorted(self.by_op.items(), key=lambda item: -item[1])]

    def top_nodes(self, count: int) -> list[dict[str, Any]]:
        """The ``count`` nodes with the most kernel time, with their share of it."""
        total = self.kernel_us or 1.0
        ranked = sorted(self.by_node.items(), key=lambda item: -item[1][1])[:count]
        return [{"node": name, "op": op, "us_per_run": us / max(self.runs, 1), "share": us / total}
                for name, (op, us) in ranked]


def read_trace(path: Path, skip_runs: int) -> KernelTimes:
    """Kernel times of the runs in ``path`` after the first ``skip_runs`` (the warm-up).

    Raises:
        TraceError: the file is not a JSON list of trace events, or it has no run after
            ``skip_runs``.
    """
    try:
        events = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TraceError(f"{path}: not a readable onnxruntime profile ({err})") from err
    if not isinstance(events, list):
        raise TraceError(f"{path}: expected a JSON list of trace events, got {type(events).__name__}")
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: float(e["ts"]))
    kept = runs[skip_runs:]
    if not kept:
        raise TraceError(f"{path}: {len(runs)} runs recorded, none after the {skip_runs} warm-up runs")
    start = float(kept[0]["ts"])
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, tuple[str, float]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith(KERNEL_SUFFIX) or float(event["ts"]) < start:
            continue
        op = str(event.get("args", {}).get("op_name", "?"))
        duration = float(event.get("dur", 0))
        by_op[op] += duration
        node = name[: -len(KERNEL_SUFFIX)]
        by_node[node] = (op, by_node.get(node, (op, 0.0))[1] + duration)
    return KernelTimes(len(kept), sum(float(e["dur"]) for e in kept), dict(by_op), by_node)
