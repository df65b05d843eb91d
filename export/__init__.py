"""embedrt's export side: source model -> ONNX artefact, checked against torch.

Modules: ``exporter`` (:func:`export_model`), ``options`` (:class:`ExportOptions`, checked
when built), ``source`` (reading a sentence-transformers folder and the catalogue),
``variants`` (what can be built, with its parity tolerance), ``parity`` (the check against
torch), ``optimise`` (fp32 fusions), ``errors``; and the ``quantize`` package (int8 and
low-bit variants).

Heavy libraries (torch, transformers, optimum, onnx, onnxruntime) are imported inside the
functions that need them, so importing this package is cheap and ExportOptions can reject
a wrong option before any heavy work.
"""

from embedrt.export.cross_encoder import export_cross_encoder
from embedrt.export.errors import (
    AccuracyTargetError,
    CatalogueMismatchError,
    ExportOptionError,
    OutputDirectoryError,
    QuantizationError,
    UnknownISAError,
    UnknownVariantError,
)
from embedrt.export.exporter import export_model
from embedrt.export.options import ExportOptions
from embedrt.export.variants import VARIANTS
from embedrt.runtime.manifest import ParityReport

__all__ = [
    "VARIANTS",
    "AccuracyTargetError",
    "CatalogueMismatchError",
    "ExportOptionError",
    "ExportOptions",
    "OutputDirectoryError",
    "ParityReport",
    "QuantizationError",
    "UnknownISAError",
    "UnknownVariantError",
    "export_cross_encoder",
    "export_model",
]
