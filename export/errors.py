"""The errors export raises: each derives from :class:`EmbedrtError` and its builtin twin.

Option errors carry the bad option as a :class:`~embedrt.runtime.errors.Param` (its Python
keyword: ``variant``, ``isa``, ...) and a ``{keyword}`` slot in the message, so the CLI
names its flag and Python the keyword; messages name the value and the allowed values.
"""

from __future__ import annotations

from embedrt.runtime.errors import EmbedrtError, SourceModelError


class ExportOptionError(EmbedrtError, ValueError):
    """An export option has a value export does not accept (``param`` names the keyword)."""


class UnknownVariantError(ExportOptionError):
    """The variant (or quantised layout) is not one export knows how to build."""


class UnknownISAError(ExportOptionError):
    """The target ISA of a quantised recipe is not a known one."""


class OutputDirectoryError(EmbedrtError, FileExistsError):
    """The output directory exists and is not an embedrt artefact: export will not overwrite it."""


class MissingPartError(EmbedrtError, ImportError):
    """A catalogue model ships as parts in several packages and one is not installed."""


class PartChecksumError(SourceModelError):
    """A part of a catalogue model, or the archive they form, is not what the catalogue says."""


class CatalogueMismatchError(SourceModelError):
    """A catalogue entry's data (dimension, length limit) disagrees with the source model."""


class QuantizationError(EmbedrtError, ValueError):
    """Root of the errors quantisation raises."""


class UnsupportedModelError(QuantizationError):
    """The graph cannot be quantised with the requested recipe."""


class PatternMismatchError(QuantizationError):
    """A block of the graph does not match the pattern a layout rewrites (the message names it).

    The ``blocks`` layout catches it and falls back to the ``per-token`` layout.
    """


class AccuracyTargetError(QuantizationError):
    """No recipe reached the requested minimum cosine, even with every node left in float."""
