"""Recipes: how each quantised variant is built, for which CPU. Data, written into the manifest.

Importing this module is cheap (no torch or onnx): export's options validate
the target ISA against :data:`ISAS` before any heavy work starts.

The targets are x86 ones. arm64 has none of its own: one int8 file serves x86 with VNNI and
arm64 (see :data:`ARM_ISA`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from embedrt.export.errors import UnknownISAError, UnknownVariantError
from embedrt.export.variants import BUILD_QUANTISED
from embedrt.export.variants import VARIANTS as ALL_VARIANTS
from embedrt.runtime.cpus import cpu_flags, is_arm
from embedrt.runtime.errors import Param

if TYPE_CHECKING:
    from collections.abc import Collection

    from embedrt.runtime.manifest import JSONValue

# The variants export builds with this package (int8, int8-edge, int4-edge), by name; the
# artefact variants themselves are embedrt.export.variants.VARIANTS.
QUANTISED_VARIANTS = tuple(v.name for v in ALL_VARIANTS.values() if v.build == BUILD_QUANTISED)
LAYOUT_BLOCKS = "blocks"
LAYOUT_PER_TOKEN = "per-token"
LAYOUTS = (LAYOUT_BLOCKS, LAYOUT_PER_TOKEN)
SCALES_AUTO, SCALES_STATIC, SCALES_PER_TOKEN = "auto", "static", "per-token"
_GRANULARITY = {
    SCALES_AUTO: "static or per-token for the block inputs (chosen at export); per-token for FFN-down",
    SCALES_STATIC: "static per-tensor for the block inputs and the context; per-token for the FFN-down input",
    SCALES_PER_TOKEN: "per-token",
}
MATMUL_INTEGER_TO_FLOAT = "MatMulIntegerToFloat"
MATMUL_NBITS = "MatMulNBits"


@dataclass(frozen=True)
class TargetISA:
    """A CPU a recipe targets.

    Attributes:
        name: the name used by ``--isa`` and in the manifest.
        cpu_flags: the x86 /proc/cpuinfo flags its kernels need (the runtime checks them at
            load; see ``embedrt.runtime.cpus.warn_missing_cpu_flags``).
        dot_product: int8 dot-product instructions (VNNI): u8 x s8 kernels do not saturate
            16-bit sums there, so weights can be s8.
        reduced_range: s8 weights in 7 bits ([-63, 63]) for CPUs without a dot product:
            onnxruntime's u8 x s8 kernel there (``vpmaddubsw``) adds pairs of u8 x s8 products
            in 16 bits, and 2 x 255 x 63 = 32130 stays below 32767, so it cannot saturate.
            The alternative to u8 weights (u8 x u8 kernel, no saturation, 8-bit codes).
    """

    name: str
    cpu_flags: tuple[str, ...]
    dot_product: bool
    reduced_range: bool = False


# In detection order: the first whose flags this CPU has is its ISA. The reduced-range target
# comes last, so it is never detected: it is chosen by name (``--isa avx2_reduced``) or by
# measurement (:func:`candidate_recipes`).
TARGET_ISAS: tuple[TargetISA, ...] = (
    TargetISA("avx512_vnni", ("avx512f", "avx512bw", "avx512_vnni"), dot_product=True),
    TargetISA("avx_vnni", ("avx2", "avx_vnni"), dot_product=True),
    TargetISA("avx512", ("avx512f", "avx512bw"), dot_product=False),
    TargetISA("avx2", ("avx2",), dot_product=False),
    TargetISA("avx2_reduced", ("avx2",), dot_product=False, reduced_range=True),
)
ISAS = tuple(isa.name for isa in TARGET_ISAS)
_BY_NAME = {isa.name: isa for isa in TARGET_ISAS}
_FALLBACK_ISA = "avx2"  # an x86 CPU whose flags cannot be read: the oldest target
# What an ARM machine exports, and what arm64 runs: the s8 graph made for x86 with VNNI.
# onnxruntime's ARM kernels (NEON, with or without the dot product) sum u8 x s8 products
# without 16-bit saturation, and the former ``--isa arm64`` wrote this same model.onnx byte
# for byte (only the manifest's label differed), so there is no arm64 recipe: one int8 file
# serves x86 with VNNI and arm64 (.ci/arm64/run checks its vectors on emulated arm64).
ARM_ISA = "avx512_vnni"


@dataclass(frozen=True)
class Recipe:
    """How a graph is quantised; ``to_dict()`` goes into the manifest (``quantisation.settings``).

    ``matmul_op`` is ``"MatMulIntegerToFloat"`` (int8, any ISA) or ``"MatMulNBits"``.
    ``weight_type`` "u8" stores int8 codes shifted by 128 so x86 CPUs without VNNI use the u8 x u8
    kernel, which widens to 16 bits before multiplying and cannot saturate; ``weight_bits`` 7 is the
    other known mitigation (reduce_range: s8 codes in [-63, 63], the ``avx2_reduced`` target,
    which keeps the u8 x s8 kernel) and measured less accurate.
    ``smoothing_alpha`` None disables SmoothQuant; it never applies to down-projection inputs
    (K > N), where it measured worse. ``context_smoothing_alpha`` is the one for attention's
    context, folded into V. ``static_range_margin`` widens the calibrated ranges of static
    scales. ``embedding_bits`` None keeps the word-embedding table fp32.

    ``blocks`` layout only: ``activation_scales`` is ``auto``, ``static`` or ``per-token`` for
    the block inputs; with per-token scales ``token_smoothing_alpha`` and
    ``token_context_smoothing_alpha`` replace the two smoothing strengths. FFN neurons whose
    calibrated activation exceeds ``fp32_neuron_ratio`` times the median neuron's (at most
    ``fp32_neurons_max`` per layer) run in fp32. ``auto`` keeps static scales when they reach
    ``static_check_min_cosine`` against the fp32 graph; ``static_check_result`` records what
    they reached.
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
    activation_scales: str | None = None
    token_smoothing_alpha: float | None = None
    token_context_smoothing_alpha: float | None = None
    fp32_neuron_ratio: float | None = None
    fp32_neurons_max: int = 0
    static_check_min_cosine: float = 1.0
    static_check_result: float | None = None
    fallback_reason: str | None = None  # why a blocks recipe became per-token

    def to_dict(self) -> dict[str, JSONValue]:
        """Return a JSON-serialisable description of the recipe."""
        data: dict[str, JSONValue] = asdict(self)
        data["quantised_ops"] = list(self.quantised_ops)
        data["exclude_nodes"] = list(self.exclude_nodes)
        return data


def cpu_features() -> dict[str, bool]:
    """Which :data:`TARGET_ISAS` this CPU can run, by name (flags read by ``embedrt.runtime.cpus``).

    Never raises: flags that cannot be read count as absent.
    """
    flags = cpu_flags()  # the same reading the runtime checks at load
    return {isa.name: set(isa.cpu_flags) <= flags for isa in TARGET_ISAS}


def detect_isa() -> str:
    """This CPU's target: :data:`ARM_ISA` on ARM, else the first of :data:`TARGET_ISAS` it supports.

    ``avx2`` when it supports none (or its flags cannot be read).
    """
    if is_arm():
        return ARM_ISA
    features = cpu_features()
    return next((isa.name for isa in TARGET_ISAS if features[isa.name]), _FALLBACK_ISA)


def candidate_recipes(variant: str = "int8", flags: Collection[str] | None = None) -> list[Recipe]:
    """The recipes of ``variant`` worth measuring on a CPU with ``flags`` (None: this CPU).

    With an int8 dot product (VNNI) or on ARM (``asimd`` among the flags): the one s8 recipe,
    which cannot saturate there. Without one (AVX2, or AVX-512 without VNNI): u8 weights (the
    u8 x u8 kernel) and reduced-range s8 weights (the faster u8 x s8 kernel, 7-bit codes), which
    differ in speed and accuracy by CPU, so a caller measures both and keeps the faster that
    passes its fidelity gate. Flags that name no target (unreadable): the ``avx2`` recipe.
    Export each with ``ExportOptions(variant=r.name, isa=r.target_isa)``.

    Raises:
        UnknownVariantError: ``variant`` is not one of :data:`QUANTISED_VARIANTS`.
    """
    if flags is None:
        if is_arm():
            return [recipe_for(variant, ARM_ISA)]
        flags = cpu_flags()
    if "asimd" in flags:
        return [recipe_for(variant, ARM_ISA)]
    detected = next(
        (isa for isa in TARGET_ISAS if not isa.reduced_range and set(isa.cpu_flags) <= set(flags)),
        _target(_FALLBACK_ISA),
    )
    found = [recipe_for(variant, detected.name)]
    if variant != "int4-edge" and not detected.dot_product and "avx2" in flags:
        found += [recipe_for(variant, isa.name) for isa in TARGET_ISAS if isa.reduced_range]
    return found


def required_cpu_flags(isa: str) -> tuple[str, ...]:
    """The CPU flags a recipe for ``isa`` needs.

    Raises:
        UnknownISAError: ``isa`` is not in :data:`ISAS`.
    """
    return _target(isa).cpu_flags


def check_isa(isa: str | None) -> None:
    """Accept None (detect) or a name in :data:`ISAS`.

    Raises:
        UnknownISAError: anything else; the message lists the known targets.
    """
    if isa is not None:
        _target(isa)


def recipe_for(
    variant: str, isa: str | None = None, layout: str = LAYOUT_BLOCKS, scales: str = SCALES_AUTO
) -> Recipe:
    """Return the recipe for ``variant`` (one of :data:`QUANTISED_VARIANTS`) on ``isa`` (None: this CPU).

    ``layout`` picks the int8 graph layout (:data:`LAYOUTS`) and ``scales`` its activation
    scales (``auto``, ``static``, ``per-token``; ``blocks`` only); ``int4-edge`` ignores both.

    Raises:
        UnknownVariantError: ``variant``, ``layout`` or ``scales`` is unknown.
        UnknownISAError: ``isa`` is not None and not in :data:`ISAS`.
    """
    if layout not in LAYOUTS:
        raise UnknownVariantError(
            f"{{layout}} {layout!r} is not known; choose one of: {', '.join(LAYOUTS)}",
            params=[Param("layout")],
        )
    if scales not in _GRANULARITY:
        raise UnknownVariantError(
            f"{{scales}} {scales!r} is not known; choose one of: {', '.join(_GRANULARITY)}",
            params=[Param("scales")],
        )
    if variant not in QUANTISED_VARIANTS:
        raise UnknownVariantError(
            f"{{variant}} {variant!r} is not a quantised variant; choose one of: "
            f"{', '.join(QUANTISED_VARIANTS)}",
            params=[Param("variant")],
        )
    target = _target(isa if isa is not None else detect_isa())
    if variant == "int4-edge":
        return Recipe(
            name=variant,
            target_isa=target.name,
            layout=LAYOUT_PER_TOKEN,
            matmul_op=MATMUL_NBITS,
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
        target_isa=target.name,
        layout=LAYOUT_BLOCKS,
        matmul_op=MATMUL_INTEGER_TO_FLOAT,
        weight_bits=7 if target.reduced_range else 8,
        weight_granularity="per-channel",
        weight_symmetric=True,
        weight_type="s8" if target.dot_product or target.reduced_range else "u8",
        activation_granularity=_GRANULARITY[scales],
        accuracy_level=None,
        # Chosen on the calibration and validation sentences (not STS-B): bench/studies/int8_recipes.py.
        smoothing_alpha=0.75,
        context_smoothing_alpha=0.3,
        static_range_margin=1.25,
        embedding_bits=4 if edge else 8,
        # 4-bit blocks of 16: blocks of 32 left all-mpnet-base-v2's int8-edge at 0.9808 (gate 0.98).
        embedding_block_size=16 if edge else 128,
        quantised_ops=("MatMul", "Gather"),
        activation_scales=scales,
        # Per-token scales: chosen on all-mpnet-base-v2 (calibration and validation sentences).
        token_smoothing_alpha=0.75,
        token_context_smoothing_alpha=0.5,
        # MPNet's massive-activation neurons are 15-50x the median neuron; 6x keeps <= 8 a layer.
        fp32_neuron_ratio=6.0,
        fp32_neurons_max=8,
        # The int8 gate's threshold. Measured: all-MiniLM-L6-v2's static graph reaches 0.9934
        # ("?!"), all-mpnet-base-v2's 0.968 (the empty string).
        static_check_min_cosine=0.99,
    )
    return recipe if layout == LAYOUT_BLOCKS else as_per_token(recipe)


def with_scales(recipe: Recipe, scales: str) -> Recipe:
    """``recipe`` (``blocks`` layout) with its activation scales resolved to ``scales``."""
    return replace(recipe, activation_scales=scales, activation_granularity=_GRANULARITY[scales])


def as_per_token(recipe: Recipe) -> Recipe:
    """``recipe`` in the ``per-token`` layout (any graph; the fallback of ``blocks``).

    A caller's "no smoothing" (``smoothing_alpha`` None) stays.
    """
    return replace(
        recipe,
        layout=LAYOUT_PER_TOKEN,
        activation_granularity="per-token",
        smoothing_alpha=None if recipe.smoothing_alpha is None else 0.7,
        context_smoothing_alpha=None,
        static_range_margin=None,
        activation_scales=None,
        token_smoothing_alpha=None,
        token_context_smoothing_alpha=None,
        fp32_neuron_ratio=None,
        fp32_neurons_max=0,
        static_check_result=None,
    )


def _target(isa: str) -> TargetISA:
    try:
        return _BY_NAME[isa]
    except KeyError:
        arm = (
            f" arm64 needs no target of its own: it runs the {ARM_ISA} int8 file (what an ARM "
            "machine exports by default; one file serves x86 with VNNI and arm64)."
            if isa.lower() in ("arm64", "aarch64", "arm", "neon")
            else ""
        )
        raise UnknownISAError(
            f"{{isa}} {isa!r} is not a known target; choose one of: {', '.join(ISAS)} "
            f"(or leave it unset to detect this machine's).{arm}",
            params=[Param("isa")],
        ) from None

