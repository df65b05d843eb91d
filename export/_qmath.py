"""Numbers shared by the int8 layouts: weight codes, calibrated ranges, SmoothQuant factors."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def int8_weights(w: np.ndarray, bits: int, weight_type: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-output-column symmetric weights: (codes, scales, zero points).

    ``weight_type`` "s8" gives int8 codes with zero points 0; "u8" shifts them by 128 so x86 CPUs
    without VNNI use the u8 x u8 kernel, which cannot saturate its 16-bit sums. ``bits`` 7 limits
    the codes to [-63, 63] (reduce_range).
    """
    qmax = 2 ** (bits - 1) - 1
    scales = (np.maximum(np.abs(w).max(0), 1e-12) / qmax).astype(np.float32)
    codes = np.clip(np.round(w / scales), -qmax, qmax).astype(np.int8)
    if weight_type == "u8":
        return (codes.astype(np.int16) + 128).astype(np.uint8), scales, np.full(codes.shape[1], 128, np.uint8)
    return codes, scales, np.zeros(codes.shape[1], np.int8)


class ActivationRange:
    """Per-channel min and max of one tensor over the calibration feeds."""

    def __init__(self) -> None:
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None

    def add(self, values: np.ndarray) -> None:
        rows = values.reshape(-1, values.shape[-1])
        low, high = rows.min(0), rows.max(0)
        self.low = low if self.low is None else np.minimum(self.low, low)
        self.high = high if self.high is None else np.maximum(self.high, high)

    @property
    def absmax(self) -> np.ndarray:
        assert self.low is not None and self.high is not None
        return np.maximum(np.abs(self.low), np.abs(self.high))


def activation_ranges(
    model: Any, names: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, ActivationRange]:
    """Per-channel ranges of the graph tensors ``names`` over ``feeds`` (one onnxruntime session)."""
    from embedrt.export._simplify import evaluate_tensors

    ranges: dict[str, ActivationRange] = collections.defaultdict(ActivationRange)
    for values in evaluate_tensors(model, names, feeds):
        for name, value in values.items():
            ranges[name].add(value)
    return dict(ranges)


def smoothing_factors(absmax: np.ndarray, wmax: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant factors s_k = a_k^alpha / w_k^(1-alpha), clipped to [0.01, 100].

    ``absmax``: the activation's per-channel max |x|; ``wmax``: the weight rows' max |w|.
    """
    return np.clip(absmax**alpha / np.maximum(wmax, 1e-5) ** (1 - alpha), 1e-2, 1e2).astype(np.float32)
