"""Embedding precisions: float32, float16, int8 (per-dimension ranges) and ubinary (packed bits).

The int8 and ubinary codes are exactly those of sentence-transformers'
``quantize_embeddings`` (``sentence_transformers/util/quantization.py``), so vectors embedrt
writes can be searched by code written for sentence-transformers, and the reverse:

- ``int8``: per dimension ``j``, ``step_j = (max_j - min_j) / 255`` (1 where ``max_j == min_j``)
  and ``code = clip(floor((x - min_j) / step_j), 0, 255) - 128``, computed in float32. The
  ranges come from :func:`calibrate_int8` on representative embeddings (the corpus), are kept
  in an :class:`Int8Calibration` and are needed again to quantise a query or to dequantise.
- ``ubinary``: ``numpy.packbits(x > 0)`` along each row: ``ceil(dim / 8)`` bytes, first
  dimension in the most significant bit, the last byte zero-padded.

:func:`dequantize_embeddings` maps codes back to float32: int8 codes to the centre of their
bucket (clipped to the calibrated range), ubinary bits to ``+-1 / sqrt(dim)`` (a unit vector with
the original's signs). Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .errors import EmbedrtError

Precision = Literal["float32", "float16", "int8", "ubinary"]
PRECISIONS: tuple[str, ...] = ("float32", "float16", "int8", "ubinary")
# The numpy dtype each precision's codes are stored in.
CODE_DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "float16": np.float16,
    "int8": np.int8,
    "ubinary": np.uint8,
}
_INT8_LEVELS = 255  # sentence-transformers' bucket count: 256 codes, 255 steps
_FLOAT16_MAX = float(np.finfo(np.float16).max)


class PrecisionError(EmbedrtError, ValueError):
    """Embeddings, codes or a precision name that cannot be (de)quantised as asked."""


class CalibrationError(PrecisionError):
    """An int8 calibration is missing, invalid, or does not fit the embeddings."""


@dataclass(frozen=True)
class Int8Calibration:
    """Per-dimension ranges for int8 codes, as sentence-transformers' ``ranges``.

    Attributes:
        minimum: the smallest value of each dimension in the calibration embeddings.
        maximum: the largest value of each dimension (``>= minimum``).

    Raises:
        CalibrationError: (on construction) the tuples are empty, differ in length, hold a
            non-finite value, or a minimum exceeds its maximum.
    """

    minimum: tuple[float, ...]
    maximum: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.minimum or len(self.minimum) != len(self.maximum):
            raise CalibrationError(
                f"int8 calibration: minimum and maximum must be non-empty and of one length "
                f"(the embedding dimension), got {len(self.minimum)} and {len(self.maximum)}"
            )
        low, high = self.arrays()
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise CalibrationError("int8 calibration: every minimum and maximum must be finite")
        bad = np.flatnonzero(low > high)
        if bad.size:
            j = int(bad[0])
            raise CalibrationError(
                f"int8 calibration: dimension {j} has minimum {self.minimum[j]} above maximum "
                f"{self.maximum[j]}; recalibrate with calibrate_int8(embeddings)"
            )

    @property
    def dim(self) -> int:
        """The embedding dimension these ranges are for."""
        return len(self.minimum)

    def arrays(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """``(minimum, maximum)`` as float32 arrays of shape ``(dim,)``."""
        return np.asarray(self.minimum, np.float32), np.asarray(self.maximum, np.float32)

    def ranges(self) -> npt.NDArray[np.float32]:
        """The ``(2, dim)`` float32 array sentence-transformers takes as ``ranges``."""
        return np.vstack(self.arrays())

    def union(self, other: Int8Calibration) -> Int8Calibration:
        """Ranges covering both calibrations (for calibrating a stream in parts).

        Raises:
            CalibrationError: the two are for different dimensions.
        """
        _check_dim(other.dim, self, "the other calibration")
        return Int8Calibration(
            tuple(map(min, self.minimum, other.minimum)), tuple(map(max, self.maximum, other.maximum))
        )

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready data; :meth:`from_dict` reads it back to the same float32 values."""
        return {"minimum": list(self.minimum), "maximum": list(self.maximum)}

    @classmethod
    def from_dict(cls, data: Any, origin: str = "int8 calibration") -> Int8Calibration:  # JSON data
        """Validate ``data`` (as written by :meth:`to_dict`) and build a calibration.

        Args:
            data: a mapping with ``minimum`` and ``maximum`` lists of numbers.
            origin: where ``data`` came from (a file and field), named in errors.

        Raises:
            CalibrationError: not a mapping, a field missing, a value not a number, or an
                invalid range (see the class).
        """
        if not isinstance(data, Mapping):
            raise CalibrationError(f"{origin}: expected an object with minimum and maximum, "
                                   f"got {type(data).__name__}")
        values: dict[str, tuple[float, ...]] = {}
        for name in ("minimum", "maximum"):
            field = data.get(name)
            if not isinstance(field, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in field
            ):
                raise CalibrationError(f"{origin}: field {name!r} must be a list of numbers, "
                                       f"got {type(field).__name__}")
            values[name] = tuple(float(v) for v in field)
        try:
            return cls(values["minimum"], values["maximum"])
        except CalibrationError as err:
            raise CalibrationError(f"{origin}: {err}") from err


def calibrate_int8(embeddings: npt.ArrayLike) -> Int8Calibration:
    """Per-dimension minimum and maximum of ``embeddings`` ``(n, dim)``, for int8 codes.

    Calibrate on many embeddings of the data to be quantised (sentence-transformers warns
    below 100); values outside the ranges are clipped to the end codes.

    Raises:
        PrecisionError: ``embeddings`` is not a non-empty 2-D float array, or is not finite.
    """
    array = _float_rows(embeddings, "embeddings")
    if array.shape[0] == 0:
        raise PrecisionError("calibrate_int8: embeddings has no rows; calibrate on at least one")
    return Int8Calibration(tuple(array.min(axis=0).tolist()), tuple(array.max(axis=0).tolist()))


def quantize_embeddings(
    embeddings: npt.ArrayLike, precision: str, calibration: Int8Calibration | None = None
) -> npt.NDArray[Any]:  # the dtype depends on precision: see CODE_DTYPES
    """Quantise float embeddings ``(n, dim)`` to ``precision``'s codes.

    Returns float32 or float16 ``(n, dim)``, int8 ``(n, dim)``, or uint8 ``(n, ceil(dim / 8))``
    for ubinary; C-contiguous, rows in input order.

    Raises:
        PrecisionError: unknown ``precision``; ``embeddings`` not a 2-D float array, not
            finite, or (float16) beyond float16's range.
        CalibrationError: int8 without ``calibration``, or one for another dimension.
    """
    check_precision(precision)
    array = _float_rows(embeddings, "embeddings")
    if precision == "float32":
        return np.ascontiguousarray(array, dtype=np.float32)
    if precision == "float16":
        if array.size and float(np.abs(array).max()) > _FLOAT16_MAX:
            raise PrecisionError(
                f"embeddings has values beyond float16's range (+-{_FLOAT16_MAX:g}); "
                "normalise them or use precision float32"
            )
        return np.ascontiguousarray(array, dtype=np.float16)
    if precision == "ubinary":
        return np.ascontiguousarray(np.packbits(array > 0, axis=-1))
    ranges = _require_calibration(calibration, array.shape[1])
    low, high = ranges.arrays()
    steps = (high - low) / np.float32(_INT8_LEVELS)
    steps = np.where(steps == 0, np.float32(1), steps)
    levels = np.clip(np.floor((array.astype(np.float32, copy=False) - low) / steps), 0, _INT8_LEVELS)
    return np.ascontiguousarray(levels - 128, dtype=np.int8)


def dequantize_embeddings(
    codes: npt.ArrayLike,
    precision: str,
    calibration: Int8Calibration | None = None,
    dim: int | None = None,
) -> npt.NDArray[np.float32]:
    """Float32 ``(n, dim)`` approximations of ``precision``'s codes.

    float32/float16 are widened exactly; int8 codes map to their bucket's centre (clipped to
    the calibrated range; a dimension with ``min == max`` to that value); ubinary bits map to
    ``+1 / sqrt(dim)`` (bit set) or ``-1 / sqrt(dim)``, a unit vector with the original's signs.

    Args:
        codes: as :func:`quantize_embeddings` returns them.
        precision: one of :data:`PRECISIONS`.
        calibration: the ranges the int8 codes were made with (int8 only).
        dim: the embedding dimension; needed for ubinary when it is not a multiple of 8
            (default: ``8 * bytes``); checked against the codes otherwise.

    Raises:
        PrecisionError: unknown ``precision``; ``codes`` not 2-D, of another dtype than the
            precision's, or not of width ``dim`` (ubinary: ``ceil(dim / 8)`` bytes).
        CalibrationError: int8 without ``calibration``, or one for another dimension.
    """
    check_precision(precision)
    array = np.asarray(codes)
    expected = np.dtype(CODE_DTYPES[precision])
    if array.ndim != 2 or array.dtype != expected:
        raise PrecisionError(
            f"{precision} codes must be a 2-D {expected.name} array, got {array.ndim}-D "
            f"{array.dtype.name}; pass what quantize_embeddings(..., {precision!r}) returned"
        )
    width = array.shape[1]
    if precision == "ubinary":
        dim = 8 * width if dim is None else dim
        if code_width(precision, dim) != width:
            raise PrecisionError(
                f"ubinary codes of {width} bytes cannot hold dimension {dim} "
                f"(it needs {code_width(precision, dim)} bytes)"
            )
        bits = np.unpackbits(array, axis=-1, count=dim)
        scale = np.float32(1.0 / math.sqrt(dim))
        signs: npt.NDArray[np.float32] = bits.astype(np.float32) * np.float32(2) - np.float32(1)
        signs *= scale
        return signs
    if dim is not None and dim != width:
        raise PrecisionError(f"{precision} codes have dimension {width}, expected {dim}")
    if precision != "int8":
        return np.ascontiguousarray(array, dtype=np.float32)
    low, high = _require_calibration(calibration, width).arrays()
    steps = (high - low) / np.float32(_INT8_LEVELS)
    centres = low + (array.astype(np.float32) + np.float32(128.5)) * steps
    return np.ascontiguousarray(np.clip(centres, low, high), dtype=np.float32)


def check_precision(precision: object) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`.

    Raises:
        PrecisionError: it is not.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return str(precision)


def code_width(precision: str, dim: int) -> int:
    """Values per row of ``precision``'s codes for dimension ``dim`` (ubinary: bytes).

    Raises:
        PrecisionError: unknown ``precision``, or ``dim`` is not positive.
    """
    check_precision(precision)
    if dim < 1:
        raise PrecisionError(f"embedding dimension must be positive, got {dim}")
    return -(-dim // 8) if precision == "ubinary" else dim


def _float_rows(embeddings: npt.ArrayLike, name: str) -> npt.NDArray[np.floating[Any]]:
    array = np.asarray(embeddings)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise PrecisionError(
            f"{name} must be a 2-D float array (rows x dimension), got a {array.ndim}-D "
            f"{array.dtype.name} array; reshape one vector with .reshape(1, -1), and pass floats "
            "(codes are quantised already)"
        )
    if not np.isfinite(array).all():
        raise PrecisionError(f"{name} holds NaN or infinite values; they cannot be quantised")
    return array


def _require_calibration(calibration: Int8Calibration | None, dim: int) -> Int8Calibration:
    if calibration is None:
        raise CalibrationError(
            "precision int8 needs an Int8Calibration (per-dimension ranges); build one with "
            "calibrate_int8(embeddings) on representative embeddings and pass calibration=..."
        )
    _check_dim(dim, calibration, "the embeddings")
    return calibration


def _check_dim(dim: int, calibration: Int8Calibration, what: str) -> None:
    if dim != calibration.dim:
        raise CalibrationError(
            f"the int8 calibration is for dimension {calibration.dim}, but {what} have dimension "
            f"{dim}; calibrate on embeddings of the same model"
        )
