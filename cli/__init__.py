"""The ``embedrt`` command line: the one place that puts library, server, export and bench together.

- ``app``: the Typer app, the list of commands, the one error mapper and ``main`` (the
  console entry point ``embedrt.cli:main``).
- one module per command (``embed``, ``similarity``, ``info``, ``export``, ``bench``,
  ``serve``); the heavy ones import their package inside the command, so ``--help`` and
  the light commands never load torch, the benchmark or the server.
- ``_common``: options and input/output helpers the commands share.

Add a command: a module here with a ``command`` function, and its name in ``app.COMMANDS``.
"""

from .app import app, main

__all__ = ["app", "main"]
