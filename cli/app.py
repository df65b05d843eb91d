"""The ``embedrt`` app: its commands, the one error mapper, and the console entry point.

Every error embedrt raises on purpose becomes one line on stderr (``embedrt: error: ...``)
and exit status 1; a bad option keeps Typer's usage message and exit status 2; a closed
stdout (``embedrt info | head -1``) ends the command quietly with status 0, as ``cat`` does.
A traceback means a bug.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import typer
from embedrt.runtime.errors import PIP_HINT, EmbedrtError, cli_spelling

from ._common import COMMAND_EXTRAS, missing_module

# One line per command: the name on the command line; its code is the module of the same
# name in this package (dashes become underscores), whose ``command`` function Typer runs.
COMMANDS = (
    "export",
    "embed",
    "similarity",
    "info",
    "serve",
    "bench",
    "search",
    "rerank",
    "embed-corpus",
)

app = typer.Typer(
    help="Run sentence-embedding models on CPUs: export to ONNX, embed, compare, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # Help text is plain text: with rich markup (typer's default where rich is installed),
    # "[serve]" in "pip install -e '.[serve]'" or "([ray] extra)" would be read as a style tag
    # and vanish.
    rich_markup_mode=None,
)


def fail(message: str) -> typer.Exit:
    """Print ``embedrt: error: message`` on stderr; returns the exit (status 1) to raise."""
    typer.echo(f"embedrt: error: {message}", err=True)
    return typer.Exit(1)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. a test runner's capture)
        pass


# Any: Typer inspects the wrapped command's own signature; the wrapper passes arguments through.
def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command: embedrt's errors and OS errors become one line on stderr and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = command(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
            return result
        except BrokenPipeError:  # the reader went away (| head): stop quietly, like cat
            _silence_stdout()
            raise typer.Exit(0) from None
        except EmbedrtError as err:
            raise fail(err.render(cli_spelling)) from err
        except OSError as err:  # unreadable input files, a full disk
            where = f"{err.filename}: " if err.filename else ""
            raise fail(f"{where}{err.strerror or err}") from err

    return wrapper


SHORT_HELP_CHARS = 60  # a marked command's line in the list fits 80 columns unwrapped


def _summary(doc: str, limit: int) -> str:
    """The first paragraph of a docstring, cut at a word before ``limit`` characters."""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:(") + "..."


def extra_marks(name: str, doc: str) -> tuple[str | None, str | None]:
    """``(short_help, epilog)`` marking a command whose extra is not installed here.

    ``(None, None)`` when the command needs no extra or its modules are importable. Otherwise
    the command list says ``[needs the X extra]`` and the command's own --help ends with what
    to install (checked with find_spec: nothing is imported).
    """
    if name not in COMMAND_EXTRAS:
        return None, None
    extra, modules = COMMAND_EXTRAS[name]
    missing = missing_module(modules)
    if missing is None:
        return None, None
    mark = f"[needs the {extra} extra]"
    short_help = f"{mark} {_summary(doc, SHORT_HELP_CHARS - len(mark) - 1)}"
    epilog = (f"Needs the [{extra}] extra, not installed here ({missing} is missing): "
              f"{PIP_HINT.format(extra=extra)}.")
    return short_help, epilog


def _register(name: str) -> None:
    module = importlib.import_module(f"{__package__}.{name.replace('-', '_')}")
    short_help, epilog = extra_marks(name, module.command.__doc__ or "")
    app.command(name, short_help=short_help, epilog=epilog)(reports_errors(module.command))


for _name in COMMANDS:
    _register(_name)


def main() -> None:
    """Console-script entry point: library log lines (truncation counts) go to stderr."""
    logging.basicConfig(level=logging.WARNING, format="embedrt: %(message)s")
    app()
