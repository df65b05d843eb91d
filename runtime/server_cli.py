"""The ``embedrt serve`` command (placeholder until the server lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""
