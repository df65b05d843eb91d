"""The artefact variants export can build, each with the parity tolerance it must meet."""

from __future__ import annotations

from dataclasses import dataclass

from embedrt.export.errors import UnknownVariantError
from embedrt.runtime.backends import ONNXRUNTIME, OPENVINO
from embedrt.runtime.errors import Param

BUILD_AS_EXPORTED = "as-exported"
BUILD_OPTIMISED = "optimised"
BUILD_QUANTISED = "quantised"
BUILD_BF16 = "bf16"


@dataclass(frozen=True)
class Variant:
    """A kind of artefact and the agreement with torch it must show at export.

    Attributes:
        name: the name used on the command line and in the manifest.
        description: one line for ``--help`` and the README.
        min_cosine: lowest per-sentence cosine to the torch reference accepted.
        max_abs_diff: largest absolute difference of any embedding element accepted.
        build: how the graph is made from the exported fp32 graph: ``as-exported``,
            ``optimised`` (onnxruntime fusions), ``quantised`` (see embedrt.export.quantize)
            or ``bf16`` (the exported graph, for OpenVINO at bfloat16 precision).
        backend: the engine the artefact runs on (``embedrt.runtime.backends``).
    """

    name: str
    description: str
    min_cosine: float
    max_abs_diff: float
    build: str = BUILD_AS_EXPORTED
    backend: str = ONNXRUNTIME


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", "the exported graph as is, float32", 0.99999, 1e-5),
        Variant(
            "fp32-optimised", "float32 with onnxruntime's transformer fusions", 0.99999, 1e-5,
            build=BUILD_OPTIMISED,
        ),
        # bfloat16 keeps 8 bits of mantissa: all-MiniLM-L6-v2 on 3,000 STS-B dev sentences
        # measured min cosine 0.99995 and max |diff| 1.7e-3 to fp32 (AMD EPYC, AVX-512 BF16).
        Variant(
            "bf16",
            "the float32 graph run by OpenVINO at bfloat16 precision on CPUs with AMX or "
            "AVX-512 BF16 (the [openvino] extra); fp32-level fidelity",
            0.9999, 5e-3, build=BUILD_BF16, backend=OPENVINO,
        ),
        # Quantised variants: per-sentence cosine is the gate; element differences follow.
        Variant(
            "int8",
            "int8 kernels on embedrt's matched encoder blocks (no onnxruntime fusion needed), "
            "batch-invariant static or per-token activation scales, "
            "an int8 embedding table; the default for CPU serving",
            0.99, 0.05, build=BUILD_QUANTISED,
        ),
        Variant(
            "int8-edge", "size first: as int8 with a 4-bit embedding table", 0.98, 0.06,
            build=BUILD_QUANTISED,
        ),
        Variant(
            "int4-edge", "smallest: 4-bit block weights (MatMulNBits) and 4-bit embeddings; "
            "lower fidelity", 0.85, 0.2, build=BUILD_QUANTISED,
        ),
    )
}


def get_variant(name: str) -> Variant:
    """Look up a variant by name.

    Raises:
        UnknownVariantError: no such variant (the message lists the known ones).
    """
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownVariantError(
            f"{{variant}} {name!r} is not known; choose one of: {', '.join(VARIANTS)}",
            params=[Param("variant")],
        ) from None
