"""Quantisation of exported sentence-embedding graphs (the int8, int8-edge and int4-edge variants).

Modules, in the order a graph goes through them:

* :mod:`.recipe`: the recipe of each variant and target CPU (data, written into the manifest).
* :mod:`.calibration`: the one calibration sentence set, its feeds, activation ranges.
* :mod:`.pipeline`: :func:`quantize`, which picks a layout and writes the graph and its record.
* :mod:`.blocks`: graph patterns, one per block kind (attention, FFN), for the fused layout.
* :mod:`.fused`: the ``fused-bert`` int8 layout (QAttention, static and per-token scales).
* :mod:`.per_token`: the ``per-token`` int8 layout (any graph; the fallback).
* :mod:`.nbits`: ``MatMulNBits`` block-wise 4/8-bit weights (int4-edge).
* :mod:`.embedding`: the word-embedding table as ``GatherBlockQuantized``.
* :mod:`.builders`: quantised ops shared by the layouts (weights, smoothing, per-token
  quantisation, ``MatMulIntegerToFloat``); :mod:`.graph`: the graph-edit container.
* :mod:`.shapes`: folding the shape arithmetic of an exported graph.
* :mod:`.variant` and :mod:`.accuracy`: a variant for export, with an optional accuracy search.

onnx and onnxruntime are imported inside the functions that use them.
"""

from embedrt.export.errors import (
    AccuracyTargetError,
    PatternMismatchError,
    QuantizationError,
    UnknownISAError,
    UnknownVariantError,
    UnsupportedModelError,
)
from embedrt.export.quantize.calibration import calibration_feeds, calibration_sentences
from embedrt.export.quantize.pipeline import quantizable_nodes, quantize, search_candidates
from embedrt.export.quantize.recipe import (
    ISAS,
    LAYOUTS,
    VARIANTS,
    Recipe,
    as_per_token,
    cpu_features,
    detect_isa,
    recipe_for,
)

__all__ = [
    "ISAS",
    "LAYOUTS",
    "VARIANTS",
    "AccuracyTargetError",
    "PatternMismatchError",
    "QuantizationError",
    "Recipe",
    "UnknownISAError",
    "UnknownVariantError",
    "UnsupportedModelError",
    "as_per_token",
    "calibration_feeds",
    "calibration_sentences",
    "cpu_features",
    "detect_isa",
    "quantizable_nodes",
    "quantize",
    "recipe_for",
    "search_candidates",
]
