"""``embedrt --help`` on an install without an extra marks the commands that need it (issue 14).

Each case runs the real CLI in a new process with the extra's modules made unimportable, as
on a base install; where they are installed, the same commands are listed unmarked.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from embedrt.cli._common import COMMAND_EXTRAS, missing_module
from embedrt.cli.app import COMMANDS

# The named top-level modules look not installed: every import finder answers "not found"
# for them (find_spec returns None, import raises ModuleNotFoundError), as on a base install.
HIDE = """
import sys
class Hide:
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {hidden!r}:
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)
sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
sys.argv = ["embedrt", *{args!r}]
from embedrt.cli import main
main()
"""
# rich stays: typer (not typer-slim, which the base install has) cannot import without it.
EVERY_EXTRA_MODULE = tuple(sorted({m for _, modules in COMMAND_EXTRAS.values() for m in modules} - {"rich"}))


def _help(*args: str, hidden: tuple[str, ...] = ()) -> str:
    code = HIDE.format(hidden=hidden, args=list(args))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result.stdout


def _listing(text: str) -> dict[str, str]:
    """``{command: its line in the command list}`` (continuation lines joined; click's plain
    format, or typer's rich panels where typer brings rich)."""
    lines: dict[str, str] = {}
    current = None
    for line in text.split("Commands", 1)[1].splitlines()[1:]:
        words = line.strip(" │").split()
        if not words:
            continue
        if words[0] in COMMANDS:
            current = words[0]
            lines[current] = " ".join(words[1:])
        elif current is not None:
            lines[current] += " " + " ".join(words)
    return lines


def test_every_command_that_needs_an_extra_is_declared() -> None:
    assert set(COMMAND_EXTRAS) == {"export", "serve", "bench", "search", "embed-corpus"}
    assert set(COMMAND_EXTRAS) <= set(COMMANDS)


def test_base_install_help_marks_the_commands_needing_an_extra() -> None:
    listing = _listing(_help("--help", hidden=EVERY_EXTRA_MODULE))
    assert set(listing) == set(COMMANDS)
    for name in COMMANDS:
        if name in COMMAND_EXTRAS:
            extra = COMMAND_EXTRAS[name][0]
            assert listing[name].startswith(f"[needs the {extra} extra] "), listing[name]
        else:
            assert "needs the" not in listing[name], listing[name]


def test_a_marked_commands_help_says_what_to_install() -> None:
    text = _help("serve", "--help", hidden=("starlette",))
    assert "Needs the [serve] extra, not installed here (starlette is missing)" in " ".join(text.split())
    assert "pip install -e '.[serve]'" in " ".join(text.split())


@pytest.mark.parametrize("name", sorted(COMMAND_EXTRAS))
def test_installed_extras_leave_their_commands_unmarked(name: str) -> None:
    if missing_module(COMMAND_EXTRAS[name][1]) is not None:
        pytest.skip(f"the [{COMMAND_EXTRAS[name][0]}] extra is not installed here")
    listing = _listing(_help("--help"))
    assert "needs the" not in listing[name], listing[name]
    assert "Needs the" not in _help(name, "--help")
