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

from ..errors import EmbedrtError, cli_spelling

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
    "embed-corpus",
)

app = typer.Typer(
    help="Run sentence-embedding models on CPUs: export to ONNX, embed, compare, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
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


def _register(name: str) -> None:
    module = importlib.import_module(f"{__package__}.{name.replace('-', '_')}")
    app.command(name)(reports_errors(module.command))


for _name in COMMANDS:
    _register(_name)


def main() -> None:
    """Console-script entry point: library log lines (truncation counts) go to stderr."""
    logging.basicConfig(level=logging.WARNING, format="embedrt: %(message)s")
    app()
