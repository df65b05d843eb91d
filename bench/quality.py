"""Quality measurements: cosine to the torch reference, STS Spearman, batch invariance.

Only numpy here: Spearman's rank correlation uses average ranks for ties (as scipy's
``spearmanr`` does), so embedrt.bench does not need scipy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from embedrt.runtime.pooling import row_cosines

from .systems import System

INVARIANCE_BATCH_SIZES = (8, 32, 128)


def cosine_stats(cosines: np.ndarray) -> dict[str, float | int | None]:
    """Min, mean and 1st percentile of per-text cosines (None when there are none)."""
    if cosines.size == 0:
        return {"n": 0, "min": None, "mean": None, "p1": None}
    return {
        "n": int(cosines.size),
        "min": float(cosines.min()),
        "mean": float(cosines.mean()),
        "p1": float(np.percentile(cosines, 1)),
    }


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start of each run of equal values, then each run's mean rank.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    run_ranks = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def spearman(left: Sequence[float] | np.ndarray, right: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks.

    Raises:
        ValueError: the inputs differ in length or have fewer than two values.
    """
    a, b = np.asarray(left, dtype=np.float64), np.asarray(right, dtype=np.float64)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"spearman needs two equal-length series of 2+ values, got {a.size} and {b.size}")
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def sts_spearman(
    system: System, pairs: Sequence[tuple[str, str]], scores: Sequence[float], batch_size: int | None
) -> float | None:
    """Spearman x100 between the pairs' cosine similarities and the gold scores."""
    if len(pairs) < 2:
        return None
    sentences = list(dict.fromkeys(s for pair in pairs for s in pair))
    index = {s: i for i, s in enumerate(sentences)}
    vectors = system.embed(sentences, batch_size)
    left = vectors[[index[a] for a, _ in pairs]]
    right = vectors[[index[b] for _, b in pairs]]
    return 100.0 * spearman(row_cosines(left, right), scores)


def fidelity(
    vectors: np.ndarray, reference: np.ndarray, counts: np.ndarray, thresholds: Sequence[int]
) -> dict[str, Any]:
    """Cosine to the reference for all texts, and for those over each token threshold."""
    cosines = row_cosines(vectors, reference)
    result: dict[str, Any] = {"all": cosine_stats(cosines)}
    for threshold in thresholds:
        result[f"over_{threshold}"] = cosine_stats(cosines[counts > threshold])
    return result


def invariance_batches(
    probes: Sequence[str], fillers: Sequence[str], batch_size: int, seed: int = 0
) -> list[tuple[list[str], list[int]]]:
    """Shuffled mixed-length batches of ``batch_size`` texts that hold every probe once.

    Each batch carries a quarter probes and the rest fillers, so a probe shares its batch
    with texts of other lengths. Returns each batch with the probes' positions in it, in
    probe order.
    """
    rng = np.random.default_rng(seed + batch_size)
    per_batch = max(1, batch_size // 4)
    batches = []
    for start in range(0, len(probes), per_batch):
        chunk = list(range(start, min(start + per_batch, len(probes))))
        picks = rng.choice(len(fillers), batch_size - len(chunk), replace=len(fillers) < batch_size)
        texts = [probes[i] for i in chunk] + [fillers[i] for i in picks]
        order = rng.permutation(len(texts))
        shuffled = [texts[i] for i in order]
        positions = [int(np.flatnonzero(order == k)[0]) for k in range(len(chunk))]
        batches.append((shuffled, positions))
    return batches


def batch_invariance(
    system: System,
    probes: Sequence[str],
    fillers: Sequence[str],
    batch_sizes: Sequence[int] = INVARIANCE_BATCH_SIZES,
) -> dict[str, dict[str, float | int | None]]:
    """Each probe embedded alone vs inside shuffled mixed batches: cosine stats per batch size."""
    alone = np.stack([system.embed([text], 1)[0] for text in probes])
    results = {}
    for batch_size in batch_sizes:
        rows = []
        for texts, positions in invariance_batches(probes, fillers, batch_size):
            rows.append(system.embed(texts, batch_size)[positions])
        results[str(batch_size)] = cosine_stats(row_cosines(alone, np.concatenate(rows)))
    return results
