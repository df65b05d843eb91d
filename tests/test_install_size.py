"""The base install's footprint: embedrt's base dependencies, and everything they pull in.

Measured from the installed distributions' RECORD files (every file pip installed, bytecode
included, console scripts too), over the closure of embedrt's base requirements (markers
evaluated here, with the extras a requirement names). pip, setuptools and wheel are not
counted (a venv brings them, not embedrt); nor is embedrt itself (an editable install is a
path file). Run in any environment: the closure is the base one even where the [export] or
[dev] extras are installed beside it. ``python tests/test_install_size.py`` prints the table.
The arm64 check (.ci/arm64/run) runs this file on emulated aarch64 too.
"""

from __future__ import annotations

import importlib.metadata as metadata
import platform
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# The budget for the base closure, in MB (10**6 bytes), pip and setuptools excluded (issue 14),
# by platform.machine(). Measured in fresh venvs (python3 -m venv; pip install -e .; then
# python tests/test_install_size.py), numpy 2.4.6, Python 3.11:
#   before the bounds (tokenizers 0.23.3 + huggingface-hub 2.4.0 + httpx + pydantic,
#   typer 0.29.2 + rich + pygments), onnxruntime 1.32.0:   x86_64 221.8, aarch64 203.9
#   with pyproject's bounds (tokenizers 0.22.2, huggingface-hub 0.36.2, typer-slim 0.21.2,
#   no rich), onnxruntime 1.32.0:                         x86_64 195.1, aarch64 177.7
#   the same with onnxruntime 1.31.1 (not taken: every published figure is 1.32's):
#                                                         x86_64 183.8, aarch64 173.5
# What is left is numpy (71 MB on x86_64) and onnxruntime (80 MB); 29 MB of the 195 is bytecode
# pip compiles at install (pip install --no-compile leaves it out).
BASE_BUDGET_MB = {"x86_64": 200.0, "aarch64": 182.0}
NOT_COUNTED = frozenset({"pip", "setuptools", "wheel", "embedrt"})


def _closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """Installed distributions reachable from ``requirements``, by canonical name.

    Raises:
        metadata.PackageNotFoundError: a reachable requirement is not installed.
    """
    found: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(text), "") for text in requirements]
    done: set[tuple[str, str]] = set()
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        wanted = [""] + sorted(requirement.extras)
        if all((name, e) in done for e in wanted):
            continue
        dist = found.get(name) or metadata.distribution(requirement.name)
        found[name] = dist
        for e in wanted:
            if (name, e) in done:
                continue
            done.add((name, e))
            todo.extend((Requirement(text), e) for text in dist.requires or [])
    return found


def _installed_bytes(dist: metadata.Distribution) -> int:
    """Bytes on disk of the files a distribution's RECORD lists (missing files count 0)."""
    total = 0
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def sizes(requirements: list[str]) -> dict[str, tuple[str, int]]:
    """``{name: (version, bytes)}`` for the closure of ``requirements``, largest first."""
    closure = _closure(requirements)
    counted = {name: dist for name, dist in closure.items() if name not in NOT_COUNTED}
    table = {name: (dist.version, _installed_bytes(dist)) for name, dist in counted.items()}
    return dict(sorted(table.items(), key=lambda item: -item[1][1]))


def base_requirements() -> list[str]:
    """embedrt's requirements as installed; :func:`sizes` drops the extras' (their marker)."""
    return metadata.requires("embedrt") or []


def _report(table: dict[str, tuple[str, int]]) -> str:
    lines = [f"{name:<22} {version:<16} {size / 1e6:8.2f} MB" for name, (version, size) in table.items()]
    total = sum(size for _, size in table.values()) / 1e6
    lines.append(f"{'total (' + platform.machine() + ')':<39} {total:8.2f} MB")
    return "\n".join(lines)


def test_base_install_within_budget() -> None:
    import pytest  # here, so the file also runs as a script where pytest is absent

    machine = platform.machine()
    if machine not in BASE_BUDGET_MB or not sys.platform.startswith("linux"):
        pytest.skip(f"no install-size budget for {sys.platform} {machine} "
                    f"(there is one for Linux on {', '.join(BASE_BUDGET_MB)})")
    try:
        table = sizes(base_requirements())
    except metadata.PackageNotFoundError as err:
        pytest.skip(f"embedrt or one of its base dependencies is not installed here ({err}): "
                    "pip install -e . first")
    budget = BASE_BUDGET_MB[machine]
    total_mb = sum(size for _, size in table.values()) / 1e6
    assert total_mb <= budget, (
        f"the base install is {total_mb:.1f} MB on {machine}, over its {budget} MB budget "
        f"(BASE_BUDGET_MB in {Path(__file__).name}); bound or drop the largest dependencies:\n"
        + _report(table)
    )


def test_base_install_has_no_hub_http_stack_or_rich() -> None:
    # What the bounds in pyproject.toml keep out of the base closure (issue 14): huggingface-hub
    # 2.x's httpx and pydantic, typer's rich and pygments. Named here so a new bound that lets
    # one back in fails with its name, not only as a few MB over budget.
    import pytest

    try:
        table = sizes(base_requirements())
    except metadata.PackageNotFoundError as err:
        pytest.skip(f"embedrt or one of its base dependencies is not installed here ({err})")
    unwanted = sorted(set(table) & {"rich", "pygments", "httpx", "pydantic", "typer", "torch"})
    assert not unwanted, f"the base install pulls {', '.join(unwanted)}:\n" + _report(table)


def test_one_typer_distribution() -> None:
    # typer and typer-slim 0.21 install the same `typer` package: with both, whichever pip
    # installed last owns the files and the other's RECORD lies (an env made before the switch
    # to typer-slim keeps typer unless it is uninstalled; the Makefile's setup does that).
    installed = []
    for name in ("typer", "typer-slim"):
        try:
            installed.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    assert len(installed) <= 1, (f"{' and '.join(installed)} are both installed and overwrite each "
                                 "other's files: pip uninstall -y typer typer-slim, then pip install -e .")


def test_closure_follows_extras_and_markers() -> None:
    # packaging is in every environment that can run this file (pytest needs it).
    table = sizes(["packaging", "pytest; python_version < '3'"])
    assert list(table) == ["packaging"]
    assert table["packaging"][1] > 10_000


if __name__ == "__main__":
    requirements = sys.argv[1:] or base_requirements()
    sys.stdout.write(_report(sizes(requirements)) + "\n")
