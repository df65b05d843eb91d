"""Pooling, normalisation and cosine similarity in numpy.

Pooling is mask-aware: padding positions never contribute. (Averaging every position, as
``last_hidden_state.mean(dim=1)`` does, is right only for a single unpadded sentence.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


def pool(hidden: npt.NDArray[Any], mask: npt.NDArray[Any], mode: str) -> FloatArray:
    """Pool per-token states ``(batch, seq, dim)`` into ``(batch, dim)`` using ``mask``.

    Raises:
        ValueError: ``mode`` is not ``mean``, ``cls`` or ``max``.
    """
    hidden = hidden.astype(np.float32, copy=False)
    if mode == "mean":
        weights = mask.astype(np.float32)[:, :, None]
        counts = np.maximum(weights.sum(axis=1), 1e-9)
        return (hidden * weights).sum(axis=1) / counts  # type: ignore[no-any-return]
    if mode == "cls":
        return np.ascontiguousarray(hidden[:, 0, :])
    if mode == "max":
        masked = np.where(mask[:, :, None].astype(bool), hidden, np.float32(-1e9))
        return masked.max(axis=1)  # type: ignore[no-any-return]
    raise ValueError(f"pooling mode {mode!r} is not one of mean, cls, max")


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
