"""Stages after pooling: sentence-transformers' ``Dense`` layers, in numpy.

A Dense stage is ``activation(vector @ weight.T + bias)``; its weights sit in the artefact
directory (an ``.npz`` export wrote), checksummed in the manifest like the graph.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .errors import ArtefactError
from .manifest import DenseStage
from .pooling import FloatArray

WEIGHT_KEY = "weight"
BIAS_KEY = "bias"

# erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7): numpy has no erf, and torch's GELU
# is the exact, erf-based one.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    t = 1.0 / (1.0 + _ERF_P * np.abs(x))
    poly = t * (_ERF_A[0] + t * (_ERF_A[1] + t * (_ERF_A[2] + t * (_ERF_A[3] + t * _ERF_A[4]))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def _gelu(x: FloatArray) -> FloatArray:
    wide = x.astype(np.float64)
    return (0.5 * wide * (1.0 + _erf(wide / np.sqrt(2.0)))).astype(np.float32)


# By the manifest's names (DENSE_ACTIVATIONS); torch's defaults for each class.
ACTIVATIONS: dict[str, Callable[[FloatArray], FloatArray]] = {
    "identity": lambda x: x,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, np.float32(0)),
    # 1 / (1 + exp(-x)) as tanh: the same value, and no overflow for large negative x.
    "sigmoid": lambda x: np.float32(0.5) * (np.float32(1) + np.tanh(np.float32(0.5) * x)),
    "gelu": _gelu,
}


class DenseLayer:
    """One Dense stage with its weights loaded: call it on ``(batch, in_features)`` vectors."""

    def __init__(self, stage: DenseStage, weight: FloatArray, bias: FloatArray | None) -> None:
        self.stage = stage
        self._weight_t = np.ascontiguousarray(weight.T)  # (in, out): vectors @ it
        self._bias = bias
        self._activation = ACTIVATIONS[stage.activation]

    def __call__(self, vectors: FloatArray) -> FloatArray:
        """``activation(vectors @ weight.T + bias)``, float32."""
        out = vectors @ self._weight_t
        if self._bias is not None:
            out += self._bias
        return self._activation(out)

    @classmethod
    def load(cls, path: Path, stage: DenseStage) -> DenseLayer:
        """Read ``stage``'s weights from ``path`` (checksum already checked by the caller).

        Raises:
            ArtefactError: the file is not a weights archive, or its arrays do not have the
                shapes the manifest states.
        """
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: np.asarray(archive[name], dtype=np.float32) for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise ArtefactError(f"{path}: not a Dense weights file ({err}); re-export the model") from err
        expected: dict[str, tuple[int, ...]] = {WEIGHT_KEY: (stage.out_features, stage.in_features)}
        if stage.bias:
            expected[BIAS_KEY] = (stage.out_features,)
        shapes = {name: array.shape for name, array in arrays.items()}
        if shapes != expected:
            raise ArtefactError(
                f"{path}: holds {shapes}, the manifest's Dense stage needs {expected}; "
                "re-export the model"
            )
        return cls(stage, arrays[WEIGHT_KEY], arrays.get(BIAS_KEY))


def apply_dense(layers: Sequence[DenseLayer], vectors: FloatArray) -> FloatArray:
    """Run ``vectors`` through ``layers`` in order (none: ``vectors`` unchanged).

    Raises:
        ValueError: the vectors' width is not the first layer's ``in_features``.
    """
    for layer in layers:
        if vectors.shape[-1] != layer.stage.in_features:
            raise ValueError(
                f"Dense stage ({layer.stage.file}) takes {layer.stage.in_features} dimensions, "
                f"got {vectors.shape[-1]}"
            )
        vectors = layer(vectors)
    return np.ascontiguousarray(vectors, dtype=np.float32)
