"""Error types raised by embedrt.

Every error derives from :class:`EmbedrtError`, and each subclass also derives from the
builtin a caller would already catch (``ValueError``, ``FileNotFoundError``, ...), so
existing ``except`` clauses keep working.

An error about a setting the caller chose (``truncate=False``, say) carries it as a
:class:`Param`, named by its Python keyword, and its message holds a slot named after the
keyword (``{truncate}``). Each front end fills the slot in its own words: Python
``truncate=True``, the command line ``--truncate``, HTTP ``"truncate": true`` (see
:meth:`EmbedrtError.render`), so no front end rewrites another's message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PIP_HINT = "pip install -e '.[{extra}]' in an embedrt checkout"


@dataclass(frozen=True)
class Param:
    """The setting an error is about, by its Python keyword, and the value that fixes it.

    Attributes:
        keyword: the keyword argument's name, e.g. ``truncate``; front ends map it to their
            own name (the CLI's ``--truncate``, the JSON field ``truncate``).
        fix: the value that avoids the error, or None when the message names the setting only.
    """

    keyword: str
    fix: bool | int | float | str | None = None


def python_spelling(param: Param) -> str:
    """``truncate=True``, or ``truncate`` when there is no fixing value."""
    return param.keyword if param.fix is None else f"{param.keyword}={param.fix!r}"


def cli_spelling(param: Param) -> str:
    """``--truncate``, ``--no-truncate``, ``--batch-size 8`` or ``--isa``."""
    flag = "--" + param.keyword.replace("_", "-")
    if param.fix is None or param.fix is True:
        return flag
    if param.fix is False:
        return f"--no-{flag[2:]}"
    return f"{flag} {param.fix}"


def json_spelling(param: Param) -> str:
    """``"truncate": true``, or ``"truncate"`` when there is no fixing value."""
    name = json.dumps(param.keyword)
    return name if param.fix is None else f"{name}: {json.dumps(param.fix)}"


class EmbedrtError(Exception):
    """Root of every error embedrt raises on purpose. The CLI prints these as one line.

    Args:
        message: the whole message; ``{keyword}`` in it is replaced by that param as the
            caller's front end spells it (``str(err)`` spells it the Python way).
        params: the settings the error is about, the main one first.
        limit: the bound the value broke (a token limit, a dimension), when there is one;
            HTTP reports it as ``limit`` beside the message.
    """

    def __init__(self, message: str = "", *, params: Sequence[Param] = (), limit: int | None = None) -> None:
        self.template = message
        self.params = tuple(params)
        self.limit = limit
        super().__init__(self.render(python_spelling))

    @property
    def param(self) -> Param | None:
        """The main setting the error is about (HTTP reports it as ``param``), or None."""
        return self.params[0] if self.params else None

    def render(self, spell: Callable[[Param], str]) -> str:
        """The message with each setting spelled by ``spell`` (e.g. :func:`cli_spelling`)."""
        message = self.template
        for param in self.params:
            message = message.replace("{" + param.keyword + "}", spell(param))
        return message


class ArtefactError(EmbedrtError, ValueError):
    """An artefact directory is incomplete, corrupt, or does not match its manifest."""


class ArtefactNotFoundError(ArtefactError, FileNotFoundError):
    """A file the artefact needs (manifest, model, tokenizer) does not exist."""


class InputTooLongError(EmbedrtError, ValueError):
    """An input has more tokens than the model accepts and truncation is turned off."""


class ConfigurationError(EmbedrtError, ValueError):
    """A setting is out of range or contradicts another one (the message names both)."""


class MissingExtraError(EmbedrtError, ImportError):
    """An optional part of embedrt was used without its extra installed.

    Args:
        extra: the pyproject extra that provides it, e.g. ``serve``.
        feature: what needed it, e.g. ``embedrt serve``.
        missing: the module that is not installed.
    """

    def __init__(self, extra: str, feature: str, missing: str) -> None:
        super().__init__(
            f"{feature} needs the [{extra}] extra ({missing} is not installed); "
            f"install it with: {PIP_HINT.format(extra=extra)}"
        )
        self.extra = extra
        self.name = missing


class SourceModelError(EmbedrtError, ValueError):
    """A source model folder cannot be exported faithfully (unknown layout or stage)."""


class ParityError(EmbedrtError, ValueError):
    """An exported artefact disagrees with the torch reference beyond its tolerance."""
