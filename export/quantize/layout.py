"""The ``blocks`` int8 layout: embedrt's own block patterns, int8 kernels on their seams.

The exported graph's shape arithmetic is folded (:mod:`.shapes`), its blocks matched and
probed (:mod:`.encoder`), activation ranges calibrated, then every block rewritten by its
module (:mod:`.attention`, :mod:`.ffn`, :mod:`.embedding`). No onnxruntime fusion is needed,
so attention with a position bias (MPNet) gets the same treatment as BERT's.

Activation scales are ``static`` (per tensor, calibrated, for LayerNorm outputs and
attention's context) or ``per-token`` (computed per row at run time) for the block inputs;
FFN-down always per token. Both keep a sentence's vector independent of its batch. Static
scales are faster (no row reductions; ``QAttention`` where there is no position bias) but
must span the largest activation any token produces: in a model with massive activations
(MPNet) that leaves too few steps for the rest. ``auto`` is decided per model by measuring
(:func:`.accuracy.choose_scales`) before the rewrite.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from embedrt.export.errors import PatternMismatchError
from embedrt.export.quantize import attention, ffn
from embedrt.export.quantize.builders import Kernels
from embedrt.export.quantize.calibration import ActivationRange, activation_ranges
from embedrt.export.quantize.encoder import Encoder, match_encoder
from embedrt.export.quantize.graph import Feed, GraphEdit
from embedrt.export.quantize.recipe import SCALES_STATIC, Recipe
from embedrt.export.quantize.shapes import fold_shape_arithmetic

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """An fp32 graph ready for the layout: folded, matched, calibrated (cached per file and feeds)."""

    folded_model: bytes
    folded: int
    encoder: Encoder
    ranges: dict[str, ActivationRange]

    def model(self) -> ModelProto:
        """A fresh copy of the folded graph to rewrite."""
        import onnx

        return onnx.load_from_string(self.folded_model)


def prepare(fp32_model: Path, feeds: Sequence[Feed]) -> Prepared:
    """Fold, match and calibrate ``fp32_model`` (the last result is kept per file and feeds).

    An accuracy search quantises the same graph dozens of times; this work is the same each time.

    Raises:
        PatternMismatchError: a block does not match its pattern (the message names it).
    """
    digest = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            digest.update(name.encode() + np.ascontiguousarray(feed[name]).tobytes())
    stat = fp32_model.stat()
    key = (str(fp32_model.resolve()), stat.st_size, stat.st_mtime_ns, digest.hexdigest())
    if key not in _last:
        _last.clear()
        try:
            _last[key] = _prepare(fp32_model, feeds)
        except PatternMismatchError as err:
            _last[key] = err  # a search asks again and again: the answer stays the same
    found = _last[key]
    if isinstance(found, PatternMismatchError):
        raise found
    return found


_last: dict[tuple[str, int, int, str], Prepared | PatternMismatchError] = {}  # by prepare()'s key


def _prepare(fp32_model: Path, feeds: Sequence[Feed]) -> Prepared:
    import onnx

    model = onnx.load(str(fp32_model))
    folded = fold_shape_arithmetic(model)
    encoder = match_encoder(model)
    names = {t for a in encoder.attention for t in (a.x, a.context)}
    names |= {t for f in encoder.ffn for t in (f.x, f.activated)}
    ranges = activation_ranges(model, sorted(names), feeds)
    return Prepared(model.SerializeToString(), folded, encoder, ranges)


@dataclass
class Rewritten:
    """The layout's edit of the folded graph (not yet committed) and what it quantised."""

    graph: GraphEdit
    quantised: list[str]
    kernels: int
    fp32_neurons: int


def rewrite(prepared: Prepared, recipe: Recipe, excluded: set[str]) -> Rewritten:
    """Rewrite every block of ``prepared``'s graph with ``recipe`` (scales resolved).

    ``excluded`` names MatMuls of the exported graph to keep float (see each block's rewrite).
    """
    g = GraphEdit(prepared.model())
    encoder = prepared.encoder
    static = recipe.activation_scales == SCALES_STATIC
    biased = any(a.position_bias for a in encoder.attention)
    kernels = Kernels(g, recipe.weight_bits, recipe.weight_type, recipe.static_range_margin or 1.0)
    attention_settings = attention.AttentionSettings(
        static=static,
        qattention=static and not biased,
        alpha=recipe.smoothing_alpha if static else recipe.token_smoothing_alpha,
        context_alpha=recipe.context_smoothing_alpha if static else recipe.token_context_smoothing_alpha,
    )
    ffn_settings = ffn.FFNSettings(
        static=static,
        alpha=recipe.smoothing_alpha if static else recipe.token_smoothing_alpha,
        neuron_ratio=recipe.fp32_neuron_ratio,
        max_neurons=recipe.fp32_neurons_max,
    )
    mask = "mask_index" if attention_settings.qattention else "key_padding_mask"
    g.before[encoder.attention[0].inner[-1].name] = _mask_nodes(g, mask)  # before the first attention
    quantised: list[str] = []
    neurons = 0
    for a, f in zip(encoder.attention, encoder.ffn, strict=True):
        quantised += attention.rewrite(kernels, a, attention_settings, prepared.ranges, mask, excluded)
        names, count = ffn.rewrite(kernels, f, ffn_settings, prepared.ranges, excluded)
        quantised += names
        neurons += count
    # Q, K and V are one kernel; every other quantised MatMul is one.
    count = len(quantised) - 2 * sum(set(a.qkv_names) <= set(quantised) for a in encoder.attention)
    return Rewritten(g, quantised, count, neurons)


def _mask_nodes(g: GraphEdit, mask: str) -> list[NodeProto]:
    """The attention mask as the attention op reads it: per-key int32, or lengths for QAttention.

    Lengths assume right padding, which embedrt's runtime always uses.
    """
    from onnx import TensorProto, helper

    if mask == "key_padding_mask":
        return [helper.make_node("Cast", ["attention_mask"], [mask], name=mask, to=TensorProto.INT32)]
    axes = g.const("mask_axes", np.array([1], np.int64))
    return [
        helper.make_node(
            "ReduceSum", ["attention_mask", axes], ["mask_lengths"], name="mask_lengths", keepdims=0
        ),
        helper.make_node("Cast", ["mask_lengths"], [mask], name=mask, to=TensorProto.INT32),
    ]
