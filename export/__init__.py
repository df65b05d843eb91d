"""embedrt's export side: source model -> ONNX artefact, checked against torch.

Heavy libraries (torch, transformers, optimum, onnx) are imported inside the functions
that need them, so importing this package is cheap.
"""

from embedrt.export.exporter import ExportOptions, OutputDirectoryError, export_model
from embedrt.export.parity import ParityReport
from embedrt.export.variants import VARIANTS, UnknownVariantError

__all__ = [
    "VARIANTS",
    "ExportOptions",
    "OutputDirectoryError",
    "ParityReport",
    "UnknownVariantError",
    "export_model",
]
