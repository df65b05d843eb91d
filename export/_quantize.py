"""Int8 / low-bit quantisation recipes for exported sentence-embedding ONNX graphs.

Each variant is a :class:`Recipe` (data, written into the manifest):

``int8``
    Layout ``fused-bert`` (:mod:`embedrt.export._fused`): onnxruntime's BERT fusions, then
    ``QAttention`` (Q/K/V projection in int8 and attention in one kernel) and
    ``MatMulIntegerToFloat`` with int8 per-output-channel weights. Activations: static
    per-tensor scales where the tensor is bounded by construction (LayerNorm outputs,
    attention's context), per-token scales for the FFN-down input (GELU output). Static and
    per-token scales both leave a sentence's vector independent of its batch (onnxruntime's
    dynamic quantisation uses one scale per tensor, i.e. per batch). SmoothQuant-style
    per-channel factors, calibrated on a few dozen sentences, move activation outliers into the
    weights. The word-embedding table becomes ``GatherBlockQuantized`` (int8, blocks of 128
    along the hidden axis), so only gathered rows are dequantised.

    A graph onnxruntime's optimizer does not fuse falls back to layout ``per-token``: every
    weight MatMul becomes ``MatMulIntegerToFloat`` fed by per-token quantisation
    (``Abs -> ReduceMax -> Max(eps) -> Mul(1/127)`` and a blocked ``QuantizeLinear``); MatMuls
    reading the same tensor (Q, K, V) share one quantisation and one wider kernel, and the
    graph's shape arithmetic is folded into constants first.

``int8-edge``
    Size first: as ``int8`` but with a 4-bit embedding table (blocks of 32).

``int4-edge``
    Smallest, lower fidelity: ``MatMulNBits`` with 4-bit block-32 weights and ``accuracy_level=4``
    (int8 compute with activations quantised per row per block, also batch-invariant), and a 4-bit
    embedding table.

On x86 CPUs without VNNI the u8 x s8 kernels can saturate 16-bit intermediate sums (onnxruntime
#6004), so the recipe for those ISAs stores u8 weights (u8 x u8 kernel, no saturation).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from embedrt.export import _fused
from embedrt.export._qmath import activation_ranges, int8_weights, smoothing_factors
from embedrt.export._simplify import fold_shape_arithmetic

logger = logging.getLogger(__name__)

VARIANTS = ("int8", "int8-edge", "int4-edge")
LAYOUTS = ("fused-bert", "per-token")
ISAS = ("avx512_vnni", "avx_vnni", "avx512", "avx2", "arm64")
_VNNI_ISAS = ("avx512_vnni", "avx_vnni", "arm64")  # arm64: sdot/udot, no 16-bit saturation
_EPS = 1e-8

# Calibration only needs per-channel activation maxima; a few dozen varied sentences suffice
# (measured: the same fidelity as 400 sentences). Not STS-B.
DEFAULT_CALIBRATION_TEXTS: tuple[str, ...] = (
    "The train to the coast leaves every hour from platform four.",
    "She forgot her umbrella at the café and had to walk home in the rain.",
    "Our quarterly revenue grew by twelve percent compared with last year.",
    "How do I reset my password if I no longer have access to my email?",
    "The recipe calls for two cups of flour, a pinch of salt and three eggs.",
    "Please restart the router and wait thirty seconds before reconnecting.",
    "Kids were playing football in the park while their parents chatted on benches.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "I'd like to cancel my subscription and get a refund for this month.",
    "The orchestra played Dvořák's ninth symphony to a sold-out hall.",
    "A woman is slicing tomatoes on a wooden cutting board.",
    "Symptoms include fever, fatigue, and a persistent dry cough.",
    "The contract may be terminated by either party with thirty days' written notice.",
    "Error 404: the page you requested could not be found.",
    "Elle a acheté du pain et du fromage au marché ce matin.",
    "Der Zug hatte wegen eines Signalfehlers zwanzig Minuten Verspätung.",
    "lol that was the funniest thing i've seen all week 😂",
    "def quantize(model: Path) -> dict:  # returns the manifest record",
    "Tokyo, Osaka and Kyoto are among the most visited cities in Japan.",
    "Inflation, unemployment and housing costs dominated the election debate.",
    "In 1969, Apollo 11 landed on the Moon and Neil Armstrong became the first person to walk on "
    "its surface, an event watched live by hundreds of millions of people around the world.",
    "When the storm finally passed, the villagers came out to inspect the damage: fallen trees "
    "blocked the main road, several roofs had been torn away, and the river had flooded the fields "
    "that had been ready for harvest. The mayor called an emergency meeting in the school hall, "
    "where volunteers organised teams to clear the debris, distribute drinking water and check on "
    "elderly residents who lived alone on the outskirts of the village. By nightfall electricity "
    "had been restored to most homes, although the bridge to the neighbouring town stayed closed.",
    "The terms and conditions set out below govern your use of the service. By creating an account "
    "you agree to be bound by these terms, including the limitation of liability and the privacy "
    "policy referenced herein. We may change these terms from time to time; continued use of the "
    "service after a change is published constitutes acceptance of the revised terms.",
)


class QuantizationError(Exception):
    """Root of the errors raised by this module."""


class UnknownVariantError(QuantizationError, ValueError):
    """The variant name is not one of :data:`VARIANTS`."""


class UnknownISAError(QuantizationError, ValueError):
    """The target ISA is not one of :data:`ISAS`."""


class UnsupportedModelError(QuantizationError, ValueError):
    """The graph cannot be quantised with the requested recipe."""


@dataclass(frozen=True)
class Recipe:
    """How a graph is quantised; ``to_dict()`` goes into the manifest.

    ``matmul_op`` is ``"MatMulIntegerToFloat"`` (per-token int8, any ISA) or ``"MatMulNBits"``.
    ``weight_type`` "u8" stores int8 codes shifted by 128 so x86 CPUs without VNNI use the u8 x u8
    kernel, which widens to 16 bits before multiplying and cannot saturate; ``weight_bits`` 7 is the
    other known mitigation (reduce_range: s8 codes in [-63, 63]) and measured less accurate.
    ``smoothing_alpha`` None disables SmoothQuant; it never applies to down-projection inputs
    (K > N), where it measured worse. ``context_smoothing_alpha`` (``fused-bert`` only) is the
    one for attention's context, folded into V. ``static_range_margin`` widens the calibrated
    ranges of static scales. ``embedding_bits`` None keeps the word-embedding table fp32.
    """

    name: str
    target_isa: str
    layout: str  # one of LAYOUTS; MatMulNBits recipes: "per-token"
    matmul_op: str
    weight_bits: int
    weight_granularity: str  # "per-channel" or "block-<n>" along K
    weight_symmetric: bool
    weight_type: str  # "s8" (u8 x s8 kernels) or "u8" (u8 x u8: no 16-bit saturation without VNNI)
    activation_granularity: str  # "per-token" or "per-token-block-<n>"
    accuracy_level: int | None
    smoothing_alpha: float | None
    embedding_bits: int | None
    embedding_block_size: int
    context_smoothing_alpha: float | None = None
    static_range_margin: float | None = None
    quantised_ops: tuple[str, ...] = ("MatMul",)
    exclude_nodes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description of the recipe."""
        d = asdict(self)
        d["quantised_ops"] = list(self.quantised_ops)
        d["exclude_nodes"] = list(self.exclude_nodes)
        return d


def detect_isa() -> dict[str, bool]:
    """Return the CPU features that decide the recipe: avx2, avx512, avx512_vnni, avx_vnni, arm.

    Reads ``/proc/cpuinfo`` where it exists (Linux) and falls back to ``platform.machine()``.
    Never raises: unknown features read as False.
    """
    from embedrt.runtime.cpus import cpu_flags  # the same reading the runtime checks at load

    machine = platform.machine().lower()
    flags = cpu_flags()
    return {
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags and "avx512bw" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "arm": machine in ("arm64", "aarch64") or machine.startswith("arm"),
    }


def _isa_name(flags: Mapping[str, bool]) -> str:
    for name, key in (
        ("arm64", "arm"),
        ("avx512_vnni", "avx512_vnni"),
        ("avx_vnni", "avx_vnni"),
        ("avx512", "avx512"),
    ):
        if flags.get(key):
            return name
    return "avx2"


def recipe_for(variant: str, isa: str | None = None, layout: str = "fused-bert") -> Recipe:
    """Return the recipe for ``variant`` (one of :data:`VARIANTS`) on ``isa`` (None: this CPU).

    ``layout`` picks the int8 graph layout (:data:`LAYOUTS`); ``int4-edge`` ignores it.

    Raises:
        UnknownVariantError: ``variant`` or ``layout`` is unknown.
        UnknownISAError: ``isa`` is not None and not in :data:`ISAS`.
    """
    if layout not in LAYOUTS:
        raise UnknownVariantError(f"layout {layout!r} is unknown; choose one of {', '.join(LAYOUTS)}.")
    if variant not in VARIANTS:
        raise UnknownVariantError(f"variant {variant!r} is unknown; choose one of {', '.join(VARIANTS)}.")
    if isa is None:
        isa = _isa_name(detect_isa())
    if isa not in ISAS:
        raise UnknownISAError(
            f"target ISA {isa!r} is unknown; choose one of {', '.join(ISAS)} or None to detect."
        )
    if variant == "int4-edge":
        return Recipe(
            name=variant,
            target_isa=isa,
            layout="per-token",
            matmul_op="MatMulNBits",
            weight_bits=4,
            weight_granularity="block-32",
            weight_symmetric=False,
            weight_type="u8",
            activation_granularity="per-token-block-32",
            accuracy_level=4,
            smoothing_alpha=None,
            embedding_bits=4,
            embedding_block_size=32,
            quantised_ops=("MatMul", "Gather"),
        )
    edge = variant == "int8-edge"
    recipe = Recipe(
        name=variant,
        target_isa=isa,
        layout="fused-bert",
        matmul_op="MatMulIntegerToFloat",
        weight_bits=8,
        weight_granularity="per-channel",
        weight_symmetric=True,
        weight_type="s8" if isa in _VNNI_ISAS else "u8",
        activation_granularity="static per-tensor; per-token for the FFN-down input",
        accuracy_level=None,
        # Chosen on the calibration and validation sentences (not STS-B): bench/int8_recipes.py.
        smoothing_alpha=0.75,
        context_smoothing_alpha=0.3,
        static_range_margin=1.25,
        embedding_bits=4 if edge else 8,
        embedding_block_size=32 if edge else 128,
        quantised_ops=("MatMul", "Gather"),
    )
    return recipe if layout == "fused-bert" else per_token(recipe)


def per_token(recipe: Recipe) -> Recipe:
    """``recipe`` in the ``per-token`` layout (any graph; the fallback of ``fused-bert``)."""
    return replace(
        recipe, layout="per-token", activation_granularity="per-token",
        smoothing_alpha=None if recipe.smoothing_alpha is None else 0.7,
        context_smoothing_alpha=None, static_range_margin=None,
    )


def _weight_matmuls(graph: Any) -> list[Any]:
    inits = {i.name for i in graph.initializer}
    return [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def quantizable_nodes(fp32_model: Path) -> list[str]:
    """Return the names of the MatMul nodes with a constant 2-D weight, in graph order.

    Raises:
        FileNotFoundError: the model file does not exist.
    """
    import onnx

    graph = onnx.load(str(fp32_model), load_external_data=False).graph
    return [n.name for n in _weight_matmuls(graph)]


def search_candidates(fp32_model: Path, recipe: Recipe) -> list[str]:
    """The MatMuls an accuracy search may keep float, as :func:`quantizable_nodes` names them.

    In the ``fused-bert`` layout the MatMuls reading one tensor (Q, K, V) are quantised or
    kept float together, so only the first of each such group is a candidate.
    """
    import onnx

    graph = onnx.load(str(fp32_model), load_external_data=False).graph
    nodes = _weight_matmuls(graph)
    unfused = {n.name: n.input[0] for n in nodes}
    if recipe.layout != "fused-bert" or _fused_or_none(fp32_model, unfused) is None:
        return [n.name for n in nodes]  # the per-token layout keeps each MatMul float on its own
    first: dict[str, str] = {}
    for n in nodes:
        first.setdefault(n.input[0], n.name)
    return [n.name for n in nodes if first[n.input[0]] == n.name]


def calibration_feeds(
    tokenizer_json: Path, texts: Sequence[str] = DEFAULT_CALIBRATION_TEXTS, max_seq_length: int = 256
) -> list[dict[str, np.ndarray]]:
    """Tokenise ``texts`` one per feed (batch 1, no padding) for :func:`quantize`.

    Raises:
        FileNotFoundError: ``tokenizer_json`` does not exist.
    """
    from tokenizers import Tokenizer

    if not Path(tokenizer_json).is_file():
        raise FileNotFoundError(
            f"tokenizer file {tokenizer_json} does not exist; pass the export's tokenizer.json."
        )
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    tok.enable_truncation(max_seq_length)
    feeds = []
    for enc in tok.encode_batch(list(texts)):
        ids = np.array([enc.ids], dtype=np.int64)
        feeds.append(
            {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        )
    return feeds


def _smoothing(
    model: Any, nodes: Sequence[Any], alpha: float, feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """SmoothQuant factors for the MatMul inputs that are not down-projections."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    wmax: dict[str, np.ndarray] = {}
    for n in nodes:
        w = numpy_helper.to_array(inits[n.input[1]])
        if w.shape[0] <= w.shape[1]:
            wmax[n.input[0]] = np.maximum(wmax.get(n.input[0], 0.0), np.abs(w).max(1))
    if not wmax:  # only down-projections left to quantise: nothing to smooth
        return {}
    ranges = activation_ranges(model, sorted(wmax), feeds)
    return {x: smoothing_factors(ranges[x].absmax, wmax[x], alpha) for x in wmax}


class _Graph:
    """Collects new nodes/initialisers while rewriting; keeps node order topological."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model = model
        self.inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.new_inits: dict[str, np.ndarray] = {}
        self.before: dict[str, list[Any]] = {}  # node name -> nodes to emit before it
        self.replace: dict[str, list[Any]] = {}  # node name -> nodes replacing it

    def const(self, name: str, value: np.ndarray) -> str:
        self.new_inits[name] = value
        return name

    def commit(self) -> None:
        from onnx import numpy_helper

        graph = self.model.graph
        nodes = []
        for n in graph.node:
            nodes += self.before.get(n.name, [])
            nodes += self.replace.get(n.name, [n])
        used = {i for n in nodes for i in n.input}
        kept = [i for i in graph.initializer if i.name in used]
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.initializer[:]
        graph.initializer.extend(
            kept + [numpy_helper.from_array(v, k) for k, v in self.new_inits.items() if k in used]
        )


def _per_token_quant(
    g: _Graph, x: str, k: int, prefix: str, inv_smooth: np.ndarray | None, zero_point: str | None
) -> tuple[list[Any], str, str, str]:
    """Nodes quantising ``x`` [..., k] row by row to u8 (zero point 128).

    Every per-token scale has the shape ``[*batch_dims, 1]``, so one zero-point tensor (made
    when ``zero_point`` is None) serves every quantisation point of the graph.

    Returns (nodes, quantised tensor, row-scale tensor, zero-point tensor).
    """
    from onnx import helper

    nodes = []
    if inv_smooth is not None:
        nodes.append(
            helper.make_node("Mul", [x, g.const(prefix + "inv_smooth", inv_smooth)], [prefix + "xs"])
        )
        x = prefix + "xs"
    nodes += [
        helper.make_node("Abs", [x], [prefix + "abs"]),
        helper.make_node(
            "ReduceMax", [prefix + "abs", g.const("pt_axes", np.array([-1], np.int64))], [prefix + "amax"]
        ),
        helper.make_node(
            "Max", [prefix + "amax", g.const("pt_eps", np.array(_EPS, np.float32))], [prefix + "amax_eps"]
        ),
        helper.make_node(
            "Mul",
            [prefix + "amax_eps", g.const("pt_inv127", np.array(1 / 127, np.float32))],
            [prefix + "scale"],
        ),
    ]
    if zero_point is None:
        # A blocked QuantizeLinear needs a zero point shaped like its scale: expand a constant.
        zero_point = "pt_zp"
        nodes += [
            helper.make_node("Shape", [prefix + "scale"], ["pt_scale_shape"]),
            helper.make_node(
                "Expand", [g.const("pt_128", np.array([128], np.uint8)), "pt_scale_shape"], [zero_point]
            ),
        ]
    nodes.append(
        helper.make_node(
            "QuantizeLinear", [x, prefix + "scale", zero_point], [prefix + "q"], axis=-1, block_size=k
        )
    )
    return nodes, prefix + "q", prefix + "scale", zero_point


def _bias_add(g: _Graph, consumers: Mapping[str, list[Any]], y: str, width: int) -> Any | None:
    """The named ``Add(y, bias)`` that is ``y``'s only reader, with a 1-D constant ``bias``."""
    readers = consumers.get(y, [])
    if len(readers) != 1 or readers[0].op_type != "Add" or not readers[0].name:
        return None
    add = readers[0]
    other = [x for x in add.input if x != y]
    if len(other) != 1 or other[0] not in g.inits or g.inits[other[0]].shape != (width,):
        return None
    return add


def _rewrite_per_token(
    g: _Graph, nodes: Sequence[Any], recipe: Recipe, smooth: Mapping[str, np.ndarray]
) -> int:
    """Replace the MatMuls by MatMulIntegerToFloat on per-token u8 activations, times the row scale.

    MatMuls that read the same tensor (attention's Q, K and V) become one wider
    MatMulIntegerToFloat whose output is split back: the activation is quantised once, the
    kernel runs once, and with their bias Adds merged too a layer has five nodes fewer.
    Weight scales are per output column, so the merged weights are the same numbers.

    Returns the number of MatMulIntegerToFloat nodes written.
    """
    from onnx import helper

    consumers: dict[str, list[Any]] = {}
    for node in g.model.graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    groups: dict[str, list[Any]] = {}
    for n in nodes:
        groups.setdefault(n.input[0], []).append(n)
    zero_point = None
    for index, (x, members) in enumerate(groups.items()):
        weights = [g.inits[n.input[1]] for n in members]
        if x in smooth:
            weights = [w * smooth[x][:, None] for w in weights]
        inv = (1 / smooth[x]).astype(np.float32) if x in smooth else None
        qnodes, q, scale, zero_point = _per_token_quant(
            g, x, weights[0].shape[0], f"pt{index}/", inv, zero_point
        )
        g.before[members[0].name] = qnodes
        # Scales are per output column: quantising the merged weight gives the same numbers.
        wq, ws, wzp = int8_weights(np.concatenate(weights, axis=1), recipe.weight_bits, recipe.weight_type)
        widths = [w.shape[1] for w in weights]
        outputs = [n.output[0] for n in members]
        base = members[0].name + ("_qkv" if len(members) > 1 else "")
        y = base + "_y" if len(members) > 1 else outputs[0]
        new = [
            helper.make_node(
                "MatMulIntegerToFloat",
                [
                    q,
                    g.const(base + "_wq", wq),
                    g.const("pt_one", np.array(1.0, np.float32)),
                    g.const(base + "_ws", ws),
                    g.const("pt_azp", np.array(128, np.uint8)),
                    g.const(base + "_wzp", wzp),
                ],
                [y + "_unscaled"],
                name=base + "_int8",
                domain="com.microsoft",
            ),
            helper.make_node("Mul", [y + "_unscaled", scale], [y], name=base + "_row_scale"),
        ]
        if len(members) > 1:
            new += _split_back(g, consumers, base, y, widths, outputs)
        g.replace[members[0].name] = new
        for n in members[1:]:
            g.replace[n.name] = []
    return len(groups)


def _split_back(
    g: _Graph,
    consumers: Mapping[str, list[Any]],
    base: str,
    y: str,
    widths: list[int],
    outputs: list[str],
) -> list[Any]:
    """Nodes splitting a merged MatMul's output ``y`` back into the original ``outputs``.

    When every original output had its own bias ``Add``, one Add of the concatenated biases
    runs before the split, whose outputs then replace the Adds' (the Adds are dropped).
    """
    from onnx import helper

    nodes = []
    adds = [_bias_add(g, consumers, out, width) for out, width in zip(outputs, widths, strict=True)]
    if all(a is not None for a in adds):
        biases = [next(b for b in a.input if b in g.inits) for a in adds]
        bias = np.concatenate([g.inits[b] for b in biases]).astype(np.float32)
        nodes.append(
            helper.make_node("Add", [y, g.const(base + "_bias", bias)], [base + "_yb"], name=base + "_bias")
        )
        y, outputs = base + "_yb", [a.output[0] for a in adds]
        for a in adds:
            g.replace[a.name] = []
    widths_name = g.const(base + "_widths", np.array(widths, np.int64))
    nodes.append(helper.make_node("Split", [y, widths_name], outputs, name=base + "_split", axis=-1))
    return nodes


def _rewrite_nbits(g: _Graph, nodes: Sequence[Any], recipe: Recipe) -> None:
    """Replace each MatMul by MatMulNBits (block-wise weights along K)."""
    from onnx import helper
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    block = int(recipe.weight_granularity.split("-")[1])
    pack = 8 // recipe.weight_bits
    for n in nodes:
        w = np.ascontiguousarray(g.inits[n.input[1]], dtype=np.float32)
        k, cols = w.shape
        k_blocks = -(-k // block)
        if k % block:
            w = np.pad(w, ((0, k_blocks * block - k), (0, 0)))
        packed = np.zeros((cols, k_blocks, block // pack), np.uint8)
        scales = np.zeros((cols, k_blocks), np.float32)
        zp = np.zeros((cols, -(-k_blocks // pack)), np.uint8)
        fn = quantize_matmul_4bits if recipe.weight_bits == 4 else quantize_matmul_8bits
        fn(packed, w, scales, zp, block, cols, k, recipe.weight_symmetric)
        base = n.input[1]
        inputs = [n.input[0], g.const(base + "_nb", packed), g.const(base + "_nb_s", scales)]
        if not recipe.weight_symmetric:
            inputs.append(g.const(base + "_nb_zp", zp))
        attrs = {"K": k, "N": cols, "bits": recipe.weight_bits, "block_size": block}
        if recipe.accuracy_level:
            attrs["accuracy_level"] = recipe.accuracy_level
        g.replace[n.name] = [
            helper.make_node(
                "MatMulNBits", inputs, list(n.output), name=n.name + "_nbits", domain="com.microsoft", **attrs
            )
        ]


def _embedding_block(dim: int, preferred: int) -> int:
    """The recipe's block size, or the largest smaller power of two (>= 16, as the op
    requires) that divides the embedding width: narrow models get finer blocks."""
    for block in (preferred, *(b for b in (128, 64, 32, 16) if b < preferred)):
        if dim % block == 0:
            return block
    raise UnsupportedModelError(
        f"embedding width {dim} is not a multiple of 16; GatherBlockQuantized cannot hold it. "
        "Use a variant that keeps the embedding table fp32."
    )


def _rewrite_embedding(g: _Graph, recipe: Recipe) -> int:
    """Turn the largest constant-table Gather (word embeddings) into GatherBlockQuantized; returns count."""
    from onnx import helper

    gathers = [
        n
        for n in g.model.graph.node
        if n.op_type == "Gather" and n.input[0] in g.inits and g.inits[n.input[0]].ndim == 2
    ]
    if not gathers or recipe.embedding_bits is None:
        return 0
    n = max(gathers, key=lambda node: g.inits[node.input[0]].size)
    table = g.inits[n.input[0]].astype(np.float32)
    bits = recipe.embedding_bits
    rows, dim = table.shape
    block = _embedding_block(dim, recipe.embedding_block_size)
    qmax = 2 ** (bits - 1) - 1
    blocks = table.reshape(rows, dim // block, block)
    scales = np.maximum(np.abs(blocks).max(-1), 1e-12) / qmax
    q = (
        (np.clip(np.round(blocks / scales[..., None]), -qmax, qmax) + 2 ** (bits - 1))
        .astype(np.uint8)
        .reshape(rows, dim)
    )
    if bits == 4:  # two codes per byte, low nibble first, along the last axis
        q = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    name = n.input[0]
    g.replace[n.name] = [
        helper.make_node(
            "GatherBlockQuantized",
            [g.const(name + "_q", q), n.input[1], g.const(name + "_scales", scales.astype(np.float32))],
            list(n.output),
            name=n.name + "_quantized",
            domain="com.microsoft",
            bits=bits,
            block_size=block,
            gather_axis=0,
            quantize_axis=1,
        )
    ]
    return 1


def _set_opsets(model: Any, recipe: Recipe) -> None:
    """Blocked QuantizeLinear needs ai.onnx opset 21 (IR 10); contrib ops need com.microsoft."""
    from onnx import helper

    ops = {o.domain: o for o in model.opset_import}
    if recipe.matmul_op == "MatMulIntegerToFloat":
        default = ops.get("") or ops.get("ai.onnx")
        if default is not None and default.version < 21:
            default.version = 21
        model.ir_version = max(model.ir_version, 10)
    if "com.microsoft" not in ops:
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _default_calibration(fp32_model: Path) -> list[dict[str, np.ndarray]]:
    """:data:`DEFAULT_CALIBRATION_TEXTS` at the length limit of the manifest beside the model."""
    from embedrt.runtime.manifest import MANIFEST_FILE, Manifest

    has_manifest = (fp32_model.parent / MANIFEST_FILE).is_file()
    limit = Manifest.load(fp32_model.parent).max_seq_length if has_manifest else 256
    return calibration_feeds(fp32_model.parent / "tokenizer.json", max_seq_length=limit)


def _fused_or_none(fp32_model: Path, unfused: dict[str, str]) -> tuple[Any, list[Any]] | None:
    """The fused graph and its layers, or None (logged) when the graph does not fuse."""
    try:
        model = _fused.fuse(fp32_model)
        return model, _fused.layers(model, unfused)
    except _fused.NotFusable as err:
        logger.warning("%s: falling back to the per-token int8 layout (%s)", fp32_model, err)
        return None


def quantize(
    fp32_model: Path,
    out_model: Path,
    recipe: Recipe,
    exclude_nodes: Sequence[str] = (),
    calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Quantise ``fp32_model`` with ``recipe`` into ``out_model`` (one file, no external data).

    ``exclude_nodes`` (and ``recipe.exclude_nodes``) name MatMuls to keep in fp32, as listed by
    :func:`quantizable_nodes`. ``calibration`` is a list of graph feeds (batch 1, unpadded) for the
    static ranges and smoothing factors; None tokenises :data:`DEFAULT_CALIBRATION_TEXTS` with the
    ``tokenizer.json`` beside ``fp32_model``, at the ``max_seq_length`` of the manifest beside it
    (256 without one).

    Layout ``fused-bert`` quantises onnxruntime's fused graph (:mod:`embedrt.export._fused`),
    falling back to ``per-token`` (recorded in the returned recipe) when the graph does not fuse;
    excluding any of a layer's Q/K/V keeps that layer's whole attention float. Layout
    ``per-token`` folds the graph's shape arithmetic first (:mod:`embedrt.export._simplify`).

    Returns the manifest record: the recipe, counts of quantised MatMuls (and of the kernels they
    became: MatMuls sharing an input are merged) and Gather nodes, the names of eligible MatMuls
    left in fp32, the shape tensors folded, the node count, the custom ops used and the file size.

    Raises:
        FileNotFoundError: the model, or the tokenizer needed for default calibration, is missing.
        UnsupportedModelError: an excluded name is not a quantisable MatMul, the graph has none, a
            MatMul is unnamed, or the embedding width is not a multiple of the embedding block size.
    """
    import onnx

    fp32_model, out_model = Path(fp32_model), Path(out_model)
    if not fp32_model.is_file():
        raise FileNotFoundError(f"fp32 model {fp32_model} does not exist; export it first.")
    model = onnx.load(str(fp32_model))
    eligible = _weight_matmuls(model.graph)
    if any(not n.name for n in eligible):
        raise UnsupportedModelError(
            f"{fp32_model} has unnamed MatMul nodes; name every node (the exporter does)."
        )
    excluded = set(exclude_nodes) | set(recipe.exclude_nodes)
    unknown = excluded - {n.name for n in eligible}
    if unknown:
        raise UnsupportedModelError(
            f"excluded nodes {sorted(unknown)} are not quantisable MatMuls in {fp32_model}; "
            "list valid names with quantizable_nodes()."
        )
    if not eligible:
        raise UnsupportedModelError(
            f"{fp32_model} has no MatMul with a constant weight; nothing to quantise."
        )
    targets = [n for n in eligible if n.name not in excluded]
    fused = None
    if recipe.layout == "fused-bert":
        fused = _fused_or_none(fp32_model, {n.name: n.input[0] for n in eligible})
        if fused is None:
            recipe = per_token(recipe)
    folded = 0
    if fused is not None:
        model, found = fused
        g = _Graph(model)
        settings = _fused.FusedSettings(
            recipe.weight_bits, recipe.weight_type, recipe.smoothing_alpha,
            recipe.context_smoothing_alpha, recipe.static_range_margin or 1.0,
        )
        feeds = calibration if calibration is not None else _default_calibration(fp32_model)
        stats = _fused.calibration_ranges(fp32_model, model, found, feeds)
        kernels, names = _fused.rewrite(g, found, settings, excluded, stats)
        quantised = set(names)
        # Every MatMul the fused graph keeps in float, e.g. K and V when Q was excluded.
        excluded = {n.name for n in eligible} - quantised
        targets = [n for n in eligible if n.name in quantised]
    else:
        folded = fold_shape_arithmetic(model)
        g = _Graph(model)
        kernels = len(targets)
        if recipe.matmul_op == "MatMulNBits":
            _rewrite_nbits(g, targets, recipe)
        else:
            smooth: dict[str, np.ndarray] = {}
            if recipe.smoothing_alpha is not None and targets:
                feeds = calibration if calibration is not None else _default_calibration(fp32_model)
                smooth = _smoothing(model, targets, recipe.smoothing_alpha, feeds)
            kernels = _rewrite_per_token(g, targets, recipe, smooth)
    gathers = _rewrite_embedding(g, recipe) if "Gather" in recipe.quantised_ops else 0
    g.commit()
    _set_opsets(model, recipe)
    out_model.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_model))
    logger.info("quantised %s -> %s with recipe %s (%s)", fp32_model, out_model, recipe.name, recipe.layout)
    return {
        "recipe": replace(recipe, exclude_nodes=tuple(sorted(excluded))).to_dict(),
        "quantised_matmuls": len(targets),
        "quantised_matmul_nodes": kernels,
        "folded_shape_tensors": folded,
        "graph_nodes": len(model.graph.node),
        "quantised_gathers": gathers,
        "fp32_matmuls": sorted(excluded),
        "ort_ops": sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"}),
        "size_bytes": out_model.stat().st_size,
    }
