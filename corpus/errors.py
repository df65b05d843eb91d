"""Errors of the corpus job; each derives from :class:`~embedrt.runtime.errors.EmbedrtError`."""

from __future__ import annotations

from embedrt.runtime.errors import EmbedrtError


class CorpusError(EmbedrtError, ValueError):
    """The corpus job cannot run as asked (a setting, an output directory, a run record)."""


class CorpusInputError(CorpusError, FileNotFoundError):
    """An input is missing, of an unknown format, or lacks a column the job needs."""


class BadRowError(CorpusError):
    """A row cannot be embedded and ``on_bad_row`` is ``fail``.

    Missing or non-string text, invalid UTF-8, an unparsable line or a duplicate id; the
    message names the file, the line or row, and the reason.
    """


class RunMismatchError(CorpusError):
    """The output directory holds a run made with another model, other inputs or settings."""
