"""The ``per-token`` int8 layout: any graph's weight MatMuls, per-token activation scales.

Every weight MatMul becomes ``MatMulIntegerToFloat`` fed by per-token (row) quantisation
(:data:`~embedrt.export.quantize.builders.SYMMETRIC_ROWS`), times the row scales. MatMuls
reading the same tensor (Q, K, V) share one quantisation and one wider kernel, split back
after it. The caller folds the graph's shape arithmetic first (:mod:`.shapes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from embedrt.export.quantize.builders import (
    SYMMETRIC_ROWS,
    FloatArray,
    int8_weights,
    matmul_integer_to_float,
    quantize_rows,
    row_constants,
    row_scale,
    smooth_input,
    smoothing_factors,
)
from embedrt.export.quantize.calibration import activation_ranges
from embedrt.export.quantize.graph import Feed, GraphEdit
from embedrt.export.quantize.recipe import Recipe

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto


def smoothing(
    model: ModelProto, nodes: Sequence[NodeProto], alpha: float, feeds: Sequence[Feed]
) -> dict[str, FloatArray]:
    """SmoothQuant factors, by input tensor, for the MatMul inputs that are not down-projections.

    MatMuls sharing an input (Q, K, V) share its factors, computed on their weights together.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    weights: dict[str, list[FloatArray]] = {}
    for n in nodes:
        w = numpy_helper.to_array(inits[n.input[1]])
        if w.shape[0] <= w.shape[1]:
            weights.setdefault(n.input[0], []).append(w)
    if not weights:  # only down-projections left to quantise: nothing to smooth
        return {}
    ranges = activation_ranges(model, sorted(weights), feeds)
    return {
        x: smoothing_factors(ranges[x].absmax, np.concatenate(ws, axis=1), alpha) for x, ws in weights.items()
    }


def rewrite(
    g: GraphEdit, nodes: Sequence[NodeProto], recipe: Recipe, smooth: Mapping[str, FloatArray]
) -> int:
    """Replace ``nodes`` by MatMulIntegerToFloat on per-token u8 activations, times the row scale.

    MatMuls that read the same tensor (attention's Q, K and V) become one wider
    MatMulIntegerToFloat whose output is split back: the activation is quantised once, the
    kernel runs once, and with their bias Adds merged too a layer has five nodes fewer.
    Weight scales are per output column, so the merged weights are the same numbers.

    Returns the number of MatMulIntegerToFloat nodes written.
    """
    readers = g.readers()
    groups: dict[str, list[NodeProto]] = {}
    for n in nodes:
        groups.setdefault(n.input[0], []).append(n)
    zero_point = None
    for index, (x, members) in enumerate(groups.items()):
        weights = [g.inits[n.input[1]] for n in members]
        prefix = f"pt{index}/"
        qnodes = []
        source = x
        if x in smooth:
            weights = [w * smooth[x][:, None] for w in weights]
            qnodes.append(smooth_input(g, x, smooth[x], prefix))
            source = prefix + "xs"
        rows = quantize_rows(g, source, weights[0].shape[0], SYMMETRIC_ROWS, prefix, zero_point)
        zero_point = rows.zero_point
        g.before[members[0].name] = qnodes + rows.nodes
        # Scales are per output column: quantising the merged weight gives the same numbers.
        wq, ws, wzp = int8_weights(np.concatenate(weights, axis=1), recipe.weight_bits, recipe.weight_type)
        widths = [w.shape[1] for w in weights]
        outputs = [n.output[0] for n in members]
        merged = len(members) > 1
        base = members[0].name + ("_qkv" if merged else "")
        y = base + "_y" if merged else outputs[0]
        one, activation_zp = row_constants(g, SYMMETRIC_ROWS)
        new = [
            matmul_integer_to_float(
                g,
                [rows.q, (base + "_wq", wq), one, (base + "_ws", ws), activation_zp, (base + "_wzp", wzp)],
                y + "_unscaled",
                base + "_int8",
            ),
            row_scale(y + "_unscaled", rows.scale, y, base + "_row_scale"),
        ]
        if merged:
            new += _split_back(g, readers, base, y, widths, outputs)
        g.replace[members[0].name] = new
        for n in members[1:]:
            g.replace[n.name] = []
    return len(groups)


def _bias_add(g: GraphEdit, readers: Mapping[str, list[NodeProto]], y: str, width: int) -> NodeProto | None:
    """The named ``Add(y, bias)`` that is ``y``'s only reader, with a 1-D constant ``bias``."""
    found = readers.get(y, [])
    if len(found) != 1 or found[0].op_type != "Add" or not found[0].name:
        return None
    add = found[0]
    other = [x for x in add.input if x != y]
    if len(other) != 1 or other[0] not in g.inits or g.inits[other[0]].shape != (width,):
        return None
    return add


def _split_back(
    g: GraphEdit,
    readers: Mapping[str, list[NodeProto]],
    base: str,
    y: str,
    widths: list[int],
    outputs: list[str],
) -> list[NodeProto]:
    """Nodes splitting a merged MatMul's output ``y`` back into the original ``outputs``.

    When every original output had its own bias ``Add``, one Add of the concatenated biases
    runs before the split, whose outputs then replace the Adds' (the Adds are dropped).
    """
    from onnx import helper

    nodes = []
    adds = [_bias_add(g, readers, out, width) for out, width in zip(outputs, widths, strict=True)]
    bias_adds = [a for a in adds if a is not None]
    if len(bias_adds) == len(adds):
        biases = [next(b for b in a.input if b in g.inits) for a in bias_adds]
        bias = np.concatenate([g.inits[b] for b in biases]).astype(np.float32)
        nodes.append(
            helper.make_node("Add", [y, g.const(base + "_bias", bias)], [base + "_yb"], name=base + "_bias")
        )
        y, outputs = base + "_yb", [a.output[0] for a in bias_adds]
        for a in bias_adds:
            g.replace[a.name] = []
    widths_name = g.const(base + "_widths", np.array(widths, np.int64))
    nodes.append(helper.make_node("Split", [y, widths_name], outputs, name=base + "_split", axis=-1))
    return nodes
