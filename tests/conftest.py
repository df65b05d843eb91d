"""Session fixtures: tiny models exported once per session, and the real model's artefact.

Artefacts are written under $EMBEDRT_TEST_ARTEFACTS when it is set (so a later run in an
environment without the [export] extra can reuse them), else under pytest's tmp dir. With the
[export] extra they are always rebuilt, so they come from the code under test.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

HAS_EXPORT = all(
    importlib.util.find_spec(name) is not None
    for name in ("torch", "transformers", "optimum", "sentence_transformers")
)
REPO = Path(__file__).resolve().parent.parent
STSB_DEV = REPO.parent / "shared" / "data" / "stsb-dev" / "dev.tsv"


def _tiny_models_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_tiny_models", Path(__file__).with_name("_tiny_models.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def artefact_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("EMBEDRT_TEST_ARTEFACTS")
    root = Path(configured).resolve() if configured else tmp_path_factory.mktemp("artefacts")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _artefact(root: Path, name: str, build: Callable[[Path], None]) -> Path:
    """Build ``root/name`` (once per session) where the [export] extra is installed; without
    it, reuse the artefact an earlier run left there. Building afresh means an artefact made
    by older export code is never what the tests check."""
    target = root / name
    if not HAS_EXPORT:
        if (target / "manifest.json").is_file():
            return target
        pytest.skip(f"artefact {name} is not under {root} and the [export] extra is missing")
    shutil.rmtree(target, ignore_errors=True)
    build(target)
    return target


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Sentence-transformers folders of the tiny models (needs the [export] extra)."""
    if not HAS_EXPORT:
        pytest.skip("building tiny models needs the [export] extra")
    tiny = _tiny_models_module()
    root = tmp_path_factory.mktemp("tiny-sources")
    return {arch: tiny.build(root, arch) for arch in ("bert", "distilbert")}


def _export_tiny(arch: str, request: pytest.FixtureRequest) -> Callable[[Path], None]:
    def build(target: Path) -> None:
        from embedrt.export import export_model

        sources = request.getfixturevalue("tiny_sources")
        export_model(sources[arch], target)

    return build


@pytest.fixture(scope="session")
def tiny_bert(artefact_root: Path, request: pytest.FixtureRequest) -> Path:
    """Artefact of the tiny BERT: mean pooling, normalised, token_type_ids, max 24 tokens."""
    return _artefact(artefact_root, "tiny-bert", _export_tiny("bert", request))


@pytest.fixture(scope="session")
def tiny_distilbert(artefact_root: Path, request: pytest.FixtureRequest) -> Path:
    """Artefact of the tiny DistilBERT: CLS pooling, not normalised, no token_type_ids."""
    return _artefact(artefact_root, "tiny-distilbert", _export_tiny("distilbert", request))


@pytest.fixture(scope="session")
def minilm_fp32(artefact_root: Path) -> Path:
    """The bundled all-MiniLM-L6-v2 exported as fp32 (checked against torch at export)."""

    def build(target: Path) -> None:
        from embedrt.export import export_model

        export_model(None, target)

    return _artefact(artefact_root, "minilm-fp32", build)


@pytest.fixture(scope="session")
def tiny_model_words() -> list[str]:
    return list(_tiny_models_module().WORDS)
