"""``python -m embedrt.cli``: the same as the ``embedrt`` command."""

from .app import main

main()
