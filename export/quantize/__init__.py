"""Quantisation of exported sentence-embedding graphs (the int8, int8-edge and int4-edge variants).

Modules, in the order a graph goes through them:

* :mod:`.recipe`: the recipe of each variant and target CPU (data, written into the manifest).
* :mod:`.calibration`: the calibration sentences (and the gate's kinds of input), feeds, ranges.
* :mod:`.pipeline`: :func:`quantize`, which picks a layout and writes the graph and its record.
* :mod:`.layout`: the ``blocks`` int8 layout (static or per-token scales, chosen per model).
* :mod:`.encoder`: matches an exported encoder block by block, with one module per block
  kind: :mod:`.embedding`, :mod:`.attention`, :mod:`.ffn` (each: pattern and int8 form),
  shared pieces in :mod:`.blocks`, and :mod:`.probe`, which checks what matched blocks compute.
* :mod:`.per_token`: the ``per-token`` int8 layout (any graph; the fallback).
* :mod:`.nbits`: ``MatMulNBits`` block-wise 4/8-bit weights (int4-edge).
* :mod:`.embedding`: the word-embedding table as ``GatherBlockQuantized``.
* :mod:`.builders`: quantised ops shared by the layouts (weights, smoothing, per-token
  quantisation, ``MatMulIntegerToFloat``); :mod:`.graph`: the graph-edit container.
* :mod:`.shapes`: folding the shape arithmetic of an exported graph.
* :mod:`.variant`: a variant for export; :mod:`.accuracy`: what measured accuracy decides (``auto``
  activation scales, the nodes an accuracy search keeps float).

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
from embedrt.export.quantize.calibration import calibration_feeds, calibration_sentences, check_sentences
from embedrt.export.quantize.pipeline import quantizable_nodes, quantize, search_candidates
from embedrt.export.quantize.recipe import (
    ISAS,
    LAYOUTS,
    QUANTISED_VARIANTS,
    Recipe,
    as_per_token,
    cpu_features,
    detect_isa,
    recipe_for,
)

__all__ = [
    "ISAS",
    "LAYOUTS",
    "QUANTISED_VARIANTS",
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
    "check_sentences",
    "cpu_features",
    "detect_isa",
    "quantizable_nodes",
    "quantize",
    "recipe_for",
    "search_candidates",
]
