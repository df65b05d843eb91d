"""Error types raised by embedrt.

Every error derives from :class:`EmbedrtError`, and each subclass also derives from the
builtin a caller would already catch (``ValueError``, ``FileNotFoundError``, ...), so
existing ``except`` clauses keep working.
"""

from __future__ import annotations


class EmbedrtError(Exception):
    """Root of every error embedrt raises on purpose. The CLI prints these as one line."""


class ArtefactError(EmbedrtError, ValueError):
    """An artefact directory is incomplete, corrupt, or does not match its manifest."""


class ArtefactNotFoundError(ArtefactError, FileNotFoundError):
    """A file the artefact needs (manifest, model, tokenizer) does not exist."""


class InputTooLongError(EmbedrtError, ValueError):
    """An input has more tokens than the model accepts and truncation is turned off."""


class MissingExtraError(EmbedrtError, ImportError):
    """An optional part of embedrt was used without its extra installed."""

    def __init__(self, extra: str, feature: str, missing: str) -> None:
        super().__init__(
            f"{feature} needs the [{extra}] extra ({missing} is not installed). "
            f"Install it with: pip install 'embedrt[{extra}]'"
        )
        self.extra = extra


class SourceModelError(EmbedrtError, ValueError):
    """A source model folder cannot be exported faithfully (unknown layout or stage)."""


class ParityError(EmbedrtError, ValueError):
    """An exported artefact disagrees with the torch reference beyond its tolerance."""
