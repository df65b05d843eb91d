"""Speed measurements: batch-1 latency, throughput, cold start, size on disk.

Systems are measured round-robin (each repeat visits every system in turn) so that
drift on a shared machine hits all of them alike; the report uses medians.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .systems import KIND_TORCH, System, SystemSpec

logger = logging.getLogger(__name__)

Advance = Callable[[], None]
READY_MARKER = "EMBEDRT-BENCH-READY"


def latency(
    systems: Sequence[System], texts: Sequence[str], warmup: int, rounds: int, advance: Advance
) -> dict[str, dict[str, float]]:
    """Batch-1 latency: each text embedded alone.

    A system makes its calls back to back, as a process serving one model does (another
    library's idle thread pools would otherwise be spinning between its calls); the texts
    are split into ``rounds`` that visit every system in turn, so drift hits all alike.

    Returns per system: ``p50_ms``, ``p95_ms``, ``p99_ms``, ``mean_ms`` and ``calls``.
    """
    times: dict[str, list[float]] = {s.spec.name: [] for s in systems}
    for chunk in np.array_split(np.arange(len(texts)), max(1, rounds)):
        for system in systems:
            for text in texts[:warmup]:
                system.embed([text], 1)
            for index in chunk:
                started = time.perf_counter()
                system.embed([texts[index]], 1)
                times[system.spec.name].append(time.perf_counter() - started)
                advance()
    return {name: _percentiles(values) for name, values in times.items()}


def _percentiles(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "mean_ms": float(ms.mean()), "calls": int(ms.size)}


def throughput(
    systems: Sequence[System],
    texts: Sequence[str],
    tokens: int,
    batch_size: int,
    repeats: int,
    advance: Advance,
) -> dict[str, dict[str, Any]]:
    """Embed all ``texts`` in one call with ``batch_size``; median of ``repeats`` after a warm-up.

    Args:
        systems: the systems, visited in turn in every repeat.
        texts: what each call embeds.
        tokens: tokens the model processes for ``texts`` (for tokens/s).
        batch_size: texts per batch.
        repeats: timed calls per system.
        advance: called after each timed call (progress).

    Returns:
        Per system: ``texts_per_s``, ``tokens_per_s``, ``median_s`` and every repeat's ``seconds``.
    """
    warm = list(texts[: max(batch_size, 8)])  # one full batch: first-call costs stay out
    for system in systems:
        system.embed(warm, batch_size)
    seconds: dict[str, list[float]] = {s.spec.name: [] for s in systems}
    for _ in range(repeats):
        for system in systems:
            started = time.perf_counter()
            system.embed(texts, batch_size)
            seconds[system.spec.name].append(time.perf_counter() - started)
            advance()
    results = {}
    for name, values in seconds.items():
        median = float(np.median(values))
        results[name] = {
            "texts_per_s": len(texts) / median,
            "tokens_per_s": tokens / median,
            "median_s": median,
            "seconds": [float(v) for v in values],
        }
    return results


_COLD_START_CODE = """
import sys
from embedrt.bench.machine import peak_rss_kib
from embedrt.bench.registry import build_system
from embedrt.bench.systems import SystemSpec
system = build_system(SystemSpec.from_json(sys.argv[1]))
system.embed(["The first sentence this process embeds."], 1)
print("{marker}", peak_rss_kib(), flush=True)
"""


def cold_start(spec: SystemSpec, runs: int, timeout: float = 300.0) -> dict[str, Any]:
    """New process -> first embedding, and that process's peak RSS, median of ``runs``.

    The clock stops when the child prints its marker line after the first embedding, so
    interpreter teardown is not counted.

    Raises:
        RuntimeError: the child failed or never reported (its stderr tail is in the message).
    """
    code = _COLD_START_CODE.format(marker=READY_MARKER)
    env = dict(os.environ)
    if spec.kind == KIND_TORCH:
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
    seconds, rss = [], []
    for _ in range(runs):
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-c", code, spec.to_json()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        elapsed, rss_kib = _await_marker(child, started, timeout)
        seconds.append(elapsed)
        rss.append(rss_kib / 1024)
    return {
        "seconds": float(np.median(seconds)),
        "peak_rss_mib": float(np.median(rss)),
        "runs": [{"seconds": s, "peak_rss_mib": r} for s, r in zip(seconds, rss, strict=True)],
    }


def _await_marker(child: subprocess.Popen[str], started: float, timeout: float) -> tuple[float, int]:
    if child.stdout is None:  # Popen(stdout=PIPE) always sets it; this narrows the type
        raise RuntimeError("cold-start child has no stdout pipe")
    elapsed: float | None = None
    rss_kib = 0
    try:
        for line in child.stdout:
            if line.startswith(READY_MARKER):
                elapsed = time.perf_counter() - started
                rss_kib = int(line.split()[1])
                break
        _, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as err:
        child.kill()
        child.communicate()
        raise RuntimeError(f"cold-start child did not finish within {timeout:.0f} s") from err
    if elapsed is None or child.returncode != 0:
        tail = " | ".join((stderr or "").strip().splitlines()[-3:])
        raise RuntimeError(f"cold-start child exited with status {child.returncode}: {tail}")
    return elapsed, rss_kib


def size_on_disk(spec: SystemSpec) -> dict[str, int]:
    """Bytes of the model's weights file and of its whole folder (symlinks followed)."""
    from .peers import model_files

    folder = Path(spec.path)
    if spec.kind == KIND_TORCH:
        weights = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    else:
        weights = model_files(spec)
        folder = weights[0].parent if spec.prepared else folder
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {
        "model_file_bytes": sum(p.stat().st_size for p in weights if p.is_file()),
        "folder_bytes": sum(p.stat().st_size for p in files),
    }
