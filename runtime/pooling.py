"""Pooling, normalisation and cosine similarity in numpy.

Pooling is mask-aware: padding positions never contribute. (Averaging every position, as
``last_hidden_state.mean(dim=1)`` does, is right only for a single unpadded sentence.) Each
mode computes what sentence-transformers' ``Pooling`` module computes for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from .manifest import pooling_modes

FloatArray = npt.NDArray[np.float32]
_Pooler = Callable[[FloatArray, npt.NDArray[Any]], FloatArray]


def pool(hidden: npt.NDArray[Any], mask: npt.NDArray[Any], mode: str) -> FloatArray:
    """Pool per-token states ``(batch, seq, dim)`` into ``(batch, dim)`` using ``mask``.

    ``mode`` is one of the manifest's pooling modes, or several joined by ``+``
    (``cls+mean``): their vectors are concatenated in that order, giving
    ``(batch, modes * dim)``, as sentence-transformers does for several modes.

    Raises:
        ValueError: a mode is not one of :data:`~embedrt.runtime.manifest.POOLING_MODES`.
    """
    poolers = [_POOLERS[name] for name in pooling_modes(mode)]
    hidden = hidden.astype(np.float32, copy=False)
    vectors = [pooler(hidden, mask) for pooler in poolers]
    return vectors[0] if len(vectors) == 1 else np.concatenate(vectors, axis=1)


def _masked_sum(hidden: FloatArray, mask: npt.NDArray[Any]) -> tuple[FloatArray, FloatArray]:
    """Sum of the unmasked states and the token count (floored at 1e-9), per row."""
    weights = mask.astype(np.float32)[:, :, None]
    return (hidden * weights).sum(axis=1), np.maximum(weights.sum(axis=1), np.float32(1e-9))


def _mean(hidden: FloatArray, mask: npt.NDArray[Any]) -> FloatArray:
    total, count = _masked_sum(hidden, mask)
    return total / count


def _mean_sqrt_len(hidden: FloatArray, mask: npt.NDArray[Any]) -> FloatArray:
    total, count = _masked_sum(hidden, mask)
    return (total / np.sqrt(count)).astype(np.float32, copy=False)


def _weighted_mean(hidden: FloatArray, mask: npt.NDArray[Any]) -> FloatArray:
    # Position p (from 0 over the padded row) weighs p + 1: later tokens count more.
    positions = np.arange(1, hidden.shape[1] + 1, dtype=np.float32)
    weights = (mask.astype(np.float32) * positions)[:, :, None]
    total = (hidden * weights).sum(axis=1)
    return total / np.maximum(weights.sum(axis=1), np.float32(1e-9))  # type: ignore[no-any-return]


def _cls(hidden: FloatArray, mask: npt.NDArray[Any]) -> FloatArray:
    # The first unmasked position: 0 with right padding, as sentence-transformers takes it.
    first = mask.astype(bool).argmax(axis=1)
    return np.ascontiguousarray(hidden[np.arange(len(hidden)), first])


def _last_token(hidden: FloatArray, mask: npt.NDArray[Any]) -> FloatArray:
    # The last unmasked position; a row with none gives zeros (sentence-transformers' rule).
    present = mask.astype(bool)
    last = hidden.shape[1] - 1 - present[:, ::-1].argmax(axis=1)
    rows = np.arange(len(hidden))
    return hidden[rows, last] * present[rows, last, None].astype(np.float32)  # type: ignore[no-any-return]


def _max(hidden: FloatArray, mask: npt.NDArray[Any]) -> FloatArray:
    masked = np.where(mask[:, :, None].astype(bool), hidden, np.float32(-1e9))
    return masked.max(axis=1)  # type: ignore[no-any-return]


_POOLERS: dict[str, _Pooler] = {
    "mean": _mean,
    "cls": _cls,
    "max": _max,
    "mean_sqrt_len_tokens": _mean_sqrt_len,
    "weightedmean": _weighted_mean,
    "lasttoken": _last_token,
}


def l2_normalize(vectors: npt.NDArray[Any]) -> FloatArray:
    """Scale each row to unit length (rows of zeros stay zero)."""
    vectors = vectors.astype(np.float32, copy=False)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))  # type: ignore[no-any-return]


# Any: a float for two vectors, an array otherwise; callers know which they passed.
def cosine_similarity(a: npt.ArrayLike, b: npt.ArrayLike) -> Any:
    """Cosine similarity of two vectors, a vector and a matrix, or two matrices.

    Two vectors give a float; a vector and a matrix give shape ``(n,)``; two matrices give
    shape ``(n, m)``: every row of ``a`` against every row of ``b``.

    Raises:
        ValueError: an argument is not 1-D or 2-D, the dimensions differ, or a vector is
            all zeros (its cosine is undefined).
    """
    left = np.asarray(a, dtype=np.float32)
    right = np.asarray(b, dtype=np.float32)
    for name, arr in (("a", left), ("b", right)):
        if arr.ndim not in (1, 2):
            raise ValueError(f"cosine_similarity: {name} must be 1-D or 2-D, got shape {arr.shape}")
    if left.shape[-1] != right.shape[-1]:
        raise ValueError(
            f"cosine_similarity: dimensions differ ({left.shape[-1]} vs {right.shape[-1]})"
        )
    left_unit = _unit_rows(np.atleast_2d(left), "a")
    right_unit = _unit_rows(np.atleast_2d(right), "b")
    scores = left_unit @ right_unit.T
    if left.ndim == 1 and right.ndim == 1:
        return float(scores[0, 0])
    if left.ndim == 1:
        return scores[0]
    if right.ndim == 1:
        return scores[:, 0]
    return scores


def _unit_rows(matrix: FloatArray, name: str) -> FloatArray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(
            f"cosine_similarity: row {int(zero[0])} of {name} is all zeros; its cosine is undefined"
        )
    return matrix / norms  # type: ignore[no-any-return]


def row_cosines(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Cosine of each row of ``a`` with the same row of ``b`` (float64, shape ``(n,)``).

    The one home of the per-row cosine that parity, the accuracy search and the benchmark
    report. Rows need not be normalised; an all-zero row gives 0 (norms floored at 1e-12).

    Raises:
        ValueError: ``a`` or ``b`` is not 2-D, or their shapes differ.
    """
    left = np.asarray(a, dtype=np.float64)
    right = np.asarray(b, dtype=np.float64)
    if left.ndim != 2 or left.shape != right.shape:
        raise ValueError(
            f"row_cosines: expected two 2-D arrays of one shape, got {left.shape} and {right.shape}"
        )
    norms = np.maximum(np.linalg.norm(left, axis=1), 1e-12) * np.maximum(
        np.linalg.norm(right, axis=1), 1e-12
    )
    return (left * right).sum(axis=1) / norms  # type: ignore[no-any-return]
