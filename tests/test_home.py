"""Models found from anywhere: the per-user home, EMBEDRT_MODEL, and the message when
nothing is exported. Every command runs from a directory outside the checkout."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from embedrt.runtime import Embedder
from embedrt.runtime import home as home_module

DEFAULT = home_module.default_model_name()


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EMBEDRT_HOME", "EMBEDRT_MODEL")}
    return {**env, "EMBEDRT_HOME": str(home), **extra}


def _cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "embedrt.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=env)


@pytest.fixture()
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with no models/ folder in it."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def test_nothing_exported_names_where_it_looked_and_every_fix(tmp_path: Path, elsewhere: Path) -> None:
    home = tmp_path / "home"
    serve = [["serve"]] if importlib.util.find_spec("uvicorn") is not None else []  # else: the extra
    for args in (["embed", "x"], ["similarity", "a", "b"], ["info"], *serve):
        result = _cli(elsewhere, _env(home), *args)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        for fragment in (str(home / "models" / DEFAULT), "int8 and fp32", "embedrt export", "--model",
                         "EMBEDRT_MODEL"):
            assert fragment in lines[0], (fragment, lines[0])


def test_commands_use_the_homes_model_from_any_directory(
    tiny_bert: Path, tiny_distilbert: Path, tmp_path: Path, elsewhere: Path
) -> None:
    home = tmp_path / "home"
    fp32 = home / "models" / DEFAULT / "fp32"
    shutil.copytree(tiny_bert, fp32)
    env = _env(home)
    embedded = _cli(elsewhere, env, "embed", "the cat")
    assert embedded.returncode == 0, embedded.stderr
    vector = np.array(json.loads(embedded.stdout)["embedding"])
    np.testing.assert_allclose(vector, Embedder.load(tiny_bert).embed(["the cat"])[0], atol=1e-6)
    assert _cli(elsewhere, env, "similarity", "a", "b").returncode == 0
    assert f"artefact        {fp32}" in _cli(elsewhere, env, "info").stdout
    # int8, once exported, is preferred; EMBEDRT_MODEL overrides both
    int8 = home / "models" / DEFAULT / "int8"
    shutil.copytree(tiny_distilbert, int8)
    assert f"artefact        {int8}" in _cli(elsewhere, env, "info").stdout
    chosen = _cli(elsewhere, {**env, "EMBEDRT_MODEL": str(tiny_bert)}, "info")
    assert f"artefact        {tiny_bert}" in chosen.stdout
    # a checkout-style path given with --model still works, relative to the working directory
    (elsewhere / "models").mkdir()
    shutil.copytree(tiny_bert, elsewhere / "models" / "mine")
    assert _cli(elsewhere, env, "embed", "x", "--model", "models/mine").returncode == 0


@pytest.mark.export
def test_export_without_out_writes_to_the_home(
    tiny_sources: dict[str, Path], tmp_path: Path, elsewhere: Path
) -> None:
    home = tmp_path / "home"
    result = _cli(elsewhere, _env(home), "export", str(tiny_sources["bert"]), "--no-check")
    assert result.returncode == 0, result.stderr
    target = home / "models" / tiny_sources["bert"].name / "fp32"
    assert (target / "manifest.json").is_file() and f"wrote {target}" in result.stdout
    assert not (elsewhere / "models").exists()


@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        ("linux", {"XDG_DATA_HOME": "/xdg"}, "/xdg/embedrt"),
        ("linux", {}, "~/.local/share/embedrt"),
        ("darwin", {}, "~/Library/Application Support/embedrt"),
        ("win32", {"LOCALAPPDATA": "/appdata"}, "/appdata/embedrt"),
        ("linux", {"EMBEDRT_HOME": "/mine", "XDG_DATA_HOME": "/xdg"}, "/mine"),
    ],
)
def test_home_per_platform(
    monkeypatch: pytest.MonkeyPatch, platform: str, env: dict[str, str], expected: str
) -> None:
    for name in ("EMBEDRT_HOME", "XDG_DATA_HOME", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(home_module.sys, "platform", platform)
    assert home_module.home() == Path(expected).expanduser()
    assert home_module.artefact_dir("m", "int8") == Path(expected).expanduser() / "models" / "m" / "int8"
