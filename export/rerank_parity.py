"""How two sets of cross-encoder scores of the same query groups agree: the gate's figures.

Used by export's parity check and by the benchmark. Scores of one query's documents are one
group; rankings are compared group by group (ties broken by input order, as
``CrossEncoder.rank`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

TOP_K = 10


@dataclass(frozen=True)
class ScoreAgreement:
    """Agreement of candidate scores with reference scores over query groups.

    Attributes:
        pairs / queries: how many pairs and query groups were compared.
        max_abs_diff: largest |candidate - reference| score.
        spearman: Spearman correlation of all candidate scores with the reference's.
        identical_rankings: fraction of queries whose full ranking is identical.
        top_k: the k of the two figures below (at most each group's size).
        mean_top_k_agreement: mean over queries of |top-k(candidate) ∩ top-k(reference)| / k.
        min_top_k_agreement: the worst query's.
        mean_ndcg_at_k: mean NDCG@k of the candidate's order, the reference scores as gains
            (shifted to be non-negative per query).
    """

    pairs: int
    queries: int
    max_abs_diff: float
    spearman: float
    identical_rankings: float
    top_k: int
    mean_top_k_agreement: float
    min_top_k_agreement: float
    mean_ndcg_at_k: float

    def to_dict(self) -> dict[str, float | int]:
        """As JSON-ready data."""
        return asdict(self)

    def summary(self) -> str:
        """One line of the figures."""
        return (
            f"{self.pairs} pairs / {self.queries} queries: max |score diff| {self.max_abs_diff:.2e}, "
            f"Spearman {self.spearman:.6f}, identical rankings {self.identical_rankings:.3f}, "
            f"top-{self.top_k} agreement mean {self.mean_top_k_agreement:.4f} "
            f"(min {self.min_top_k_agreement:.2f}), NDCG@{self.top_k} {self.mean_ndcg_at_k:.5f}"
        )


def order(scores: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Indices by descending score, ties in input order (``CrossEncoder.rank``'s order)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Spearman rank correlation (average ranks for ties), no scipy needed."""
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if np.array_equal(ra, rb) else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement(
    reference: npt.ArrayLike, candidate: npt.ArrayLike, groups: Sequence[Sequence[int]], top_k: int = TOP_K
) -> ScoreAgreement:
    """Compare ``candidate`` scores with ``reference`` (1-D, one per pair) over ``groups``.

    ``groups`` lists, per query, the positions of its pairs in the score arrays.

    Raises:
        ValueError: the arrays differ in shape, or a group is empty.
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(-1)
    if ref.shape != cand.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, candidate {cand.shape}")
    identical, overlaps, ndcgs = [], [], []
    k = min(top_k, min((len(g) for g in groups), default=top_k))
    for group in groups:
        if not group:
            raise ValueError("a query group is empty")
        rows = np.asarray(group)
        ref_order, cand_order = order(ref[rows]), order(cand[rows])
        identical.append(bool(np.array_equal(ref_order, cand_order)))
        overlaps.append(len(set(ref_order[:k]) & set(cand_order[:k])) / k)
        ndcgs.append(_ndcg(ref[rows], cand_order, ref_order, k))
    return ScoreAgreement(
        pairs=int(ref.size),
        queries=len(groups),
        max_abs_diff=float(np.abs(ref - cand).max()) if ref.size else 0.0,
        spearman=spearman(ref, cand),
        identical_rankings=float(np.mean(identical)) if groups else 1.0,
        top_k=k,
        mean_top_k_agreement=float(np.mean(overlaps)) if groups else 1.0,
        min_top_k_agreement=float(np.min(overlaps)) if groups else 1.0,
        mean_ndcg_at_k=float(np.mean(ndcgs)) if groups else 1.0,
    )


def _ndcg(
    gains: npt.NDArray[np.float64], got: npt.NDArray[np.intp], ideal: npt.NDArray[np.intp], k: int
) -> float:
    shifted = gains - gains.min()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    best = float((shifted[ideal[:k]] * discounts).sum())
    return 1.0 if best == 0 else float((shifted[got[:k]] * discounts).sum()) / best


def _ranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    idx = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[idx] = np.arange(len(values), dtype=np.float64)
    uniques, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(uniques) < len(values):  # average the ranks of ties
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks
