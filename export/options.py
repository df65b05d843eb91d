"""``ExportOptions``: how to export, checked when constructed.

Importing this module is cheap (no torch, onnx or onnxruntime), so a command line can build
the options, and fail on a wrong value, before any heavy work.
"""

from __future__ import annotations

from dataclasses import dataclass

from embedrt.export.errors import ExportOptionError
from embedrt.export.quantize.recipe import check_isa
from embedrt.export.variants import get_variant
from embedrt.runtime.errors import Param


@dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Attributes:
        variant: which artefact to build (see ``embedrt.export.VARIANTS``).
        check: measure parity against torch and fail beyond the variant's tolerance.
        opset: ONNX opset (a positive integer); None lets the exporter choose.
        threads: onnxruntime threads for the parity check (>= 1); None = the usable CPUs.
        isa: x86 CPU the quantised recipe targets (avx512_vnni, avx_vnni, avx512, avx2);
            None detects this machine's. arm64 has no target of its own: it runs the
            avx512_vnni file (an ARM machine exports that one), one int8 file for both.
        min_cosine: for quantised variants, keep the most sensitive nodes in float until the
            minimum per-sentence cosine to torch on the calibration sentences reaches this
            (0 to 1).

    Raises:
        UnknownVariantError: ``variant`` is not a known variant.
        UnknownISAError: ``isa`` is not a known target.
        ExportOptionError: another option is out of range (the message names the keyword).
    """

    variant: str = "fp32"
    check: bool = True
    opset: int | None = None
    threads: int | None = None
    isa: str | None = None
    min_cosine: float | None = None

    def __post_init__(self) -> None:
        get_variant(self.variant)
        check_isa(self.isa)
        if self.opset is not None and (_not_int(self.opset) or self.opset < 1):
            raise _out_of_range("opset", self.opset, "a positive integer, or None to let the exporter choose")
        if self.threads is not None and (_not_int(self.threads) or self.threads < 1):
            raise _out_of_range("threads", self.threads, "an integer >= 1, or None for the usable CPUs")
        if self.min_cosine is not None and not (
            isinstance(self.min_cosine, (int, float))
            and not isinstance(self.min_cosine, bool)
            and 0.0 <= self.min_cosine <= 1.0
        ):
            raise _out_of_range("min_cosine", self.min_cosine, "a number from 0 to 1, or None for no search")
        if not isinstance(self.check, bool):
            raise _out_of_range("check", self.check, "True or False")


def _not_int(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool)


def _out_of_range(keyword: str, value: object, allowed: str) -> ExportOptionError:
    return ExportOptionError(
        f"{{{keyword}}} {value!r} is not accepted; use {allowed}", params=[Param(keyword)]
    )
