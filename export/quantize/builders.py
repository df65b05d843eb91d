"""Quantised-op builders shared by the int8 layouts.

Weight codes, smoothing, per-token (row) quantisation and ``MatMulIntegerToFloat``: one
implementation each; the ``blocks`` and ``per-token`` layouts differ only in the data
they pass.

Initialiser and node names are part of the exported file: they are kept exactly as each
layout has always written them, so a re-export is byte-identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from embedrt.export.quantize.graph import GraphEdit, Tensor

if TYPE_CHECKING:
    from onnx import NodeProto

FloatArray = npt.NDArray[np.float32]
Const = tuple[str, Tensor]  # an initialiser not yet registered: (name, value)
GELU_MIN = 0.17  # min over x of x * Phi(x) is -0.16997, at x = -0.7518


def int8_weights(w: FloatArray, bits: int, weight_type: str) -> tuple[Tensor, FloatArray, Tensor]:
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


def smoothing_factors(absmax: FloatArray, weight: FloatArray, alpha: float | None) -> FloatArray:
    """SmoothQuant factors s_k = a_k^alpha / w_k^(1-alpha) for ``weight``'s input, in [0.01, 100].

    ``absmax``: the activation's per-channel max |x| (calibrated); ``weight``: [K, N], whose
    rows' max |w| is w_k. Ones when ``alpha`` is None. The activation is divided by s and the
    weight's rows multiplied by it, which moves activation outliers into the weights.
    """
    if alpha is None:
        return np.ones(weight.shape[0], np.float32)
    wmax = np.abs(weight).max(1)
    factors: FloatArray = np.clip(absmax**alpha / np.maximum(wmax, 1e-5) ** (1 - alpha), 1e-2, 1e2).astype(
        np.float32
    )
    return factors


def smooth_input(
    g: GraphEdit, x: str, factors: FloatArray, prefix: str, name: str | None = None
) -> NodeProto:
    """``Mul(x, 1 / factors)`` into ``prefix + "xs"``: the activation side of smoothing."""
    from onnx import helper

    inverse = g.const(prefix + "inv_smooth", (1 / factors).astype(np.float32))
    return helper.make_node("Mul", [x, inverse], [prefix + "xs"], name=name)


@dataclass(frozen=True)
class RowScheme:
    """How a per-token (per-row) u8 quantisation computes its scale.

    ``symmetric``: any activation; scale = max(max|x|, floor) / 127, zero point 128.
    Otherwise the activation is bounded below (GELU's output is never below -0.17):
    scale = max(max x / (255 - zero point), floor), so the small zero point holds the negative
    part and the positive range gets the other steps.

    Attributes:
        constants: initialiser name of each shared constant, by role (``axes``, ``floor``,
            ``inv_levels``, ``zero_point_value``, ``scale_shape``, ``zero_point``, ``one``,
            ``activation_zero_point``).
        name_nodes: whether the nodes get names (the per-token layout's never had them).
    """

    symmetric: bool
    zero_point: int
    floor: float
    constants: Mapping[str, str]
    name_nodes: bool

    @property
    def levels(self) -> int:
        """Quantisation steps above the zero point."""
        return 127 if self.symmetric else 255 - self.zero_point


SYMMETRIC_ROWS = RowScheme(
    symmetric=True,
    zero_point=128,
    floor=1e-8,
    name_nodes=False,
    constants={
        "axes": "pt_axes",
        "floor": "pt_eps",
        "inv_levels": "pt_inv127",
        "zero_point_value": "pt_128",
        "scale_shape": "pt_scale_shape",
        "zero_point": "pt_zp",
        "one": "pt_one",
        "activation_zero_point": "pt_azp",
    },
)
_GELU_ZERO_POINT = 16  # 16 steps hold [-0.17, 0] whenever the scale is >= 0.17 / 16
GELU_ROWS = RowScheme(
    symmetric=False,
    zero_point=_GELU_ZERO_POINT,
    floor=GELU_MIN / _GELU_ZERO_POINT,
    name_nodes=True,
    constants={
        "axes": "down_axes",
        "floor": "down_floor",
        "inv_levels": "down_inv",
        "zero_point_value": "down_zp_value",
        "scale_shape": "down_scale_shape",
        "zero_point": "down_zp",
        "one": "down_one",
        "activation_zero_point": "down_azp",
    },
)


@dataclass(frozen=True)
class QuantisedRows:
    """The result of :func:`quantize_rows`: nodes to emit and the tensors they produce."""

    nodes: list[NodeProto]
    q: str
    scale: str
    zero_point: str


def quantize_rows(
    g: GraphEdit, x: str, k: int, scheme: RowScheme, prefix: str, zero_point: str | None
) -> QuantisedRows:
    """Nodes quantising ``x`` [..., k] row by row to u8 with ``scheme``.

    Every row scale has the shape ``[*batch_dims, 1]``, so one zero-point tensor (made when
    ``zero_point`` is None, else reused) serves every quantisation point of a scheme.
    """
    from onnx import helper

    names = scheme.constants

    def node_name(name: str) -> str | None:
        return name if scheme.name_nodes else None

    axes = g.const(names["axes"], np.array([-1], np.int64))
    floor = np.array(scheme.floor, np.float32)
    inv_levels = np.array(1 / scheme.levels, np.float32)
    scale = prefix + "scale"
    nodes: list[NodeProto]
    if scheme.symmetric:  # |x|, floored, then scaled
        nodes = [
            helper.make_node("Abs", [x], [prefix + "abs"], name=node_name(prefix + "abs")),
            helper.make_node(
                "ReduceMax", [prefix + "abs", axes], [prefix + "amax"], name=node_name(prefix + "amax")
            ),
            helper.make_node(
                "Max",
                [prefix + "amax", g.const(names["floor"], floor)],
                [prefix + "amax_eps"],
                name=node_name(prefix + "amax_eps"),
            ),
            helper.make_node(
                "Mul",
                [prefix + "amax_eps", g.const(names["inv_levels"], inv_levels)],
                [scale],
                name=node_name(scale),
            ),
        ]
    else:  # the row max, scaled, then floored
        nodes = [
            helper.make_node("ReduceMax", [x, axes], [prefix + "max"], name=node_name(prefix + "max")),
            helper.make_node(
                "Mul",
                [prefix + "max", g.const(names["inv_levels"], inv_levels)],
                [prefix + "scale0"],
                name=node_name(prefix + "scale0"),
            ),
            helper.make_node(
                "Max", [prefix + "scale0", g.const(names["floor"], floor)], [scale], name=node_name(scale)
            ),
        ]
    if zero_point is None:  # a blocked QuantizeLinear wants a zero point shaped like its scale
        zero_point, shape = names["zero_point"], names["scale_shape"]
        value = g.const(names["zero_point_value"], np.array([scheme.zero_point], np.uint8))
        nodes += [
            helper.make_node("Shape", [scale], [shape], name=node_name(shape)),
            helper.make_node("Expand", [value, shape], [zero_point], name=node_name(zero_point)),
        ]
    nodes.append(
        helper.make_node(
            "QuantizeLinear",
            [x, scale, zero_point],
            [prefix + "q"],
            name=node_name(prefix + "quant"),
            axis=-1,
            block_size=k,
        )
    )
    return QuantisedRows(nodes, prefix + "q", scale, zero_point)


def row_constants(g: GraphEdit, scheme: RowScheme) -> tuple[Const, Const]:
    """The activation scale and zero point a row-quantised ``MatMulIntegerToFloat`` reads.

    Not yet registered. The scale is 1: the row scales multiply the kernel's output.
    """
    names = scheme.constants
    return (names["one"], np.array(1.0, np.float32)), (
        names["activation_zero_point"],
        np.array(scheme.zero_point, np.uint8),
    )


def matmul_integer_to_float(
    g: GraphEdit, inputs: Sequence[str | Const], out: str, name: str, bias: str | None = None
) -> NodeProto:
    """``MatMulIntegerToFloat(a, b, a_scale, b_scale, a_zero_point, b_zero_point[, bias])``.

    ``inputs`` are the six tensors in that order; a ``(name, value)`` pair is registered as an
    initialiser as it is reached, so initialisers keep the order the inputs give them.
    """
    from onnx import helper

    names = [item if isinstance(item, str) else g.const(*item) for item in inputs]
    if bias is not None:
        names.append(bias)
    return helper.make_node("MatMulIntegerToFloat", names, [out], name=name, domain="com.microsoft")


def row_scale(unscaled: str, scale: str, out: str, name: str) -> NodeProto:
    """``Mul(unscaled, scale)``: a row-quantised kernel's output times its row scales."""
    from onnx import helper

    return helper.make_node("Mul", [unscaled, scale], [out], name=name)


class Kernels:
    """Emits int8 kernels into one graph edit: static or per-token activations, int8 weights.

    Activations are divided by smoothing factors (``smooth``, None for none) before they are
    quantised; the caller multiplies the weight rows by the same factors. The row zero-point
    tensor of each :class:`RowScheme` is made once and shared by every per-token point.
    """

    def __init__(self, g: GraphEdit, weight_bits: int, weight_type: str, margin: float) -> None:
        self.g = g
        self.weight_bits, self.weight_type, self.margin = weight_bits, weight_type, margin
        self._row_zero_points: dict[str, str] = {}

    def matmul(
        self, q: str, w: FloatArray, a_scale: str, a_zp: str, prefix: str, out: str, bias: FloatArray | None
    ) -> NodeProto:
        """``MatMulIntegerToFloat`` of codes ``q`` and ``w`` (int8 per output column), bias fused."""
        codes, scales, zps = int8_weights(w, self.weight_bits, self.weight_type)
        inputs: list[str | Const] = [
            q,
            (prefix + "w", codes),
            a_scale,
            (prefix + "ws", scales),
            a_zp,
            (prefix + "wzp", zps),
        ]
        bias_name = None if bias is None else self.g.const(prefix + "b", bias.astype(np.float32))
        node: NodeProto = matmul_integer_to_float(self.g, inputs, out, prefix + "int8", bias_name)
        return node

    def static_matmul(
        self,
        x: str,
        stat: tuple[Tensor, Tensor],
        smooth: FloatArray | None,
        w: FloatArray,
        prefix: str,
        out: str,
        bias: FloatArray | None,
    ) -> list[NodeProto]:
        """``x / smooth`` quantised with a static per-tensor range, times ``w``, plus ``bias``.

        ``stat`` is the calibrated per-channel (low, high) of the tensor quantised, i.e. of
        ``x / smooth`` (or of ``x`` when smoothing is absent or folded upstream); the range is
        widened by the margin.
        """
        nodes, q, scale, zp = self.static_codes(x, stat, smooth, prefix)
        return [*nodes, self.matmul(q, w, scale, zp, prefix, out, bias)]

    def static_codes(
        self, x: str, stat: tuple[Tensor, Tensor], smooth: FloatArray | None, prefix: str
    ) -> tuple[list[NodeProto], str, str, str]:
        """The static quantisation of :meth:`static_matmul`: (nodes, codes, scale, zero point)."""
        from onnx import helper

        low, high = stat
        lowest = min(0.0, float(low.min())) * self.margin
        highest = max(0.0, float(high.max())) * self.margin
        step = max(highest - lowest, 1e-8) / 255
        zero_point = int(np.clip(round(-lowest / step), 0, 255))
        nodes = []
        if smooth is not None:
            nodes.append(smooth_input(self.g, x, smooth, prefix, name=prefix + "smooth"))
            x = prefix + "xs"
        scale = self.g.const(prefix + "scale", np.array(step, np.float32))
        zp = self.g.const(prefix + "zp", np.array(zero_point, np.uint8))
        quant = helper.make_node("QuantizeLinear", [x, scale, zp], [prefix + "q"], name=prefix + "quant")
        return [*nodes, quant], prefix + "q", scale, zp

    def row_matmul(
        self, x: str, smooth: FloatArray | None, w: FloatArray, scheme: RowScheme, prefix: str, out: str
    ) -> list[NodeProto]:
        """``x / smooth`` quantised row by row with ``scheme``, times ``w``, row-scaled into ``out``."""
        nodes: list[NodeProto] = []
        if smooth is not None:
            nodes.append(smooth_input(self.g, x, smooth, prefix, name=prefix + "smooth"))
            x = prefix + "xs"
        key = scheme.constants["zero_point"]
        rows = quantize_rows(self.g, x, w.shape[0], scheme, prefix, self._row_zero_points.get(key))
        self._row_zero_points[key] = rows.zero_point
        one, activation_zp = (self.g.const(*c) for c in row_constants(self.g, scheme))
        unscaled = prefix + "y_unscaled"
        return [
            *nodes,
            *rows.nodes,
            self.matmul(rows.q, w, one, activation_zp, prefix, unscaled, None),
            row_scale(unscaled, rows.scale, out, prefix + "row_scale"),
        ]
