"""Helpers shared by the test files: import them with ``from _helpers import ...``.

pytest runs with ``--import-mode=importlib``, so the tests folder is not on ``sys.path`` and a
test file cannot import another. ``conftest.py`` loads this module once and registers it in
``sys.modules`` as ``_helpers`` before any test file is collected; keep it free of fixtures and
of imports beyond the standard library and numpy at module level (the base and arm64
environments load it too).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

# Mixed lengths, an empty text and texts past a tiny model's limit: for invariance checks.
MIXED = [
    "the cat",
    "a man is playing guitar",
    "",
    "hello world " * 3,
    "the quick brown fox jumps",
    "the cat sat on the road " * 8,
    "dog",
    "water tree house car road music piano",
] * 4


def make_texts(words: list[str], count: int, seed: int = 0) -> list[str]:
    """``count`` texts of 1 to 40 ``words`` each, the same for the same ``seed``
    (the tiny models truncate at 24 tokens, so some are cut)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(count)]


def output_bytes(out: Path) -> dict[str, bytes]:
    """Every file under a corpus job's output folder, by relative path, as bytes; ``run.json``
    without its ``timings`` (the one part that differs between equal runs)."""
    found = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    record = json.loads(found.pop("run.json"))
    record.pop("timings")
    found["run.json"] = json.dumps(record, sort_keys=True).encode()
    return found


def finished_shards(out: Path) -> int:
    """Shards a corpus job's ``run.json`` records as finished (0 before it exists or while it
    is being replaced)."""
    try:
        return len(json.loads((out / "run.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def batch_invariance(embedder: Any, texts: list[str], batch_sizes: tuple[int, ...]) -> float:
    """The min cosine between each text embedded alone and inside batches of each size.

    The batches are shuffled (seed 0), not length-sorted, so each mixes short and long texts:
    a quantised graph whose activation scales depend on the batch shows up here.
    """
    from embedrt.runtime.pooling import row_cosines

    alone = np.stack([embedder.embed([t])[0] for t in texts])
    worst = 1.0
    rng = np.random.default_rng(0)
    for size in batch_sizes:
        order = rng.permutation(len(texts))
        batched = np.empty_like(alone)
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            batched[rows] = embedder.encode([texts[i] for i in rows], batch_size=size).vectors
        worst = min(worst, float(row_cosines(alone, batched).min()))
    return worst
