"""``python -m embedrt.runtime.cli``: the same as the ``embedrt`` command."""

from .app import main

main()
