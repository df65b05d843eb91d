"""Session fixtures: every artefact the tests read is exported once per test run.

Tiny models (built in the session) in fp32, int8, int8-edge, int4-edge and the per-token
layout, and the bundled all-MiniLM-L6-v2 in fp32 and int8. Tests that only read an
artefact take these fixtures; a test exports on its own only when the export itself is
what it checks (a refusal, a monkeypatched step, an option).

Artefacts are written under $EMBEDRT_TEST_ARTEFACTS when it is set (so a later run in an
environment without the [export] extra can reuse them), else under pytest's tmp dir. With the
[export] extra they are always rebuilt, so they come from the code under test.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HAS_EXPORT = all(
    importlib.util.find_spec(name) is not None
    for name in ("torch", "transformers", "optimum", "sentence_transformers")
)
REPO = Path(__file__).resolve().parent.parent
STSB_DEV = REPO / "bench" / "data" / "stsb-dev" / "dev.tsv"  # shipped with the project


def _load_sibling(name: str) -> ModuleType:
    """Load ``tests/<name>.py`` as module ``name`` (the tests folder is not on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# What each pyproject extra brings that tests import. A test marked ``extras("serve")`` (or
# ``export`` / ``real_model``, which need the [export] extra) is deselected, and counted in
# pytest's summary, where one is not installed: the base environment runs what it can, skipping
# nothing. Where EMBEDRT_ALL_EXTRAS=1 (make test-full) a missing extra is an error instead.
EXTRA_MODULES = {
    "export": ("torch", "transformers", "optimum", "sentence_transformers"),
    "serve": ("starlette", "uvicorn"),
    "bench": ("matplotlib",),
    "openvino": ("openvino",),
    "peers": ("nncf",),
}


def _missing_extras(item: pytest.Item) -> list[str]:
    needed = [name for marker in item.iter_markers("extras") for name in marker.args]
    needed += ["export" for name in ("export", "real_model") if item.get_closest_marker(name)]
    return sorted({name for name in needed
                   if any(importlib.util.find_spec(module) is None for module in EXTRA_MODULES[name])})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests whose extras are not installed (see EXTRA_MODULES)."""
    missing = {item.nodeid: _missing_extras(item) for item in items}
    dropped = [item for item in items if missing[item.nodeid]]
    if not dropped:
        return
    absent = sorted({name for names in missing.values() for name in names})
    if os.environ.get("EMBEDRT_ALL_EXTRAS") == "1":
        raise pytest.UsageError(f"EMBEDRT_ALL_EXTRAS=1 but these extras are not installed: {absent}")
    config.hook.pytest_deselected(items=dropped)
    items[:] = [item for item in items if not missing[item.nodeid]]


def _tiny_models_module() -> ModuleType:
    return _load_sibling("_tiny_models")


# Test files share helpers with ``from _helpers import ...``: registered here, before any test
# file is collected, because --import-mode=importlib keeps the tests folder off sys.path.
helpers = sys.modules.setdefault("_helpers", _load_sibling("_helpers"))
sys.modules.setdefault("_reranker_fixtures", _load_sibling("_reranker_fixtures"))  # test_reranker*.py


@pytest.fixture(scope="session")
def tiny_models() -> ModuleType:
    """The module that builds the tiny models (``build``, ``add_stage``, ``WORDS``, ``ARCHITECTURES``)."""
    return _tiny_models_module()


@pytest.fixture(scope="session")
def running_server() -> Callable[..., Any]:
    """test_server.py's launcher of a real ``embedrt serve`` process, for other test files.

    ``with running_server(model, log_dir, *cli_args) as server:`` yields its ``Server``
    (``url``, ``log()``); skips without the [serve] extra.
    """
    pytest.importorskip("starlette", reason="the server needs the [serve] extra (starlette)")
    pytest.importorskip("uvicorn", reason="the server needs the [serve] extra (uvicorn)")
    pytest.importorskip("httpx", reason="the server tests need httpx (the [dev] extra)")
    spec = importlib.util.spec_from_file_location("_server_tests", Path(__file__).with_name("test_server.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    launcher: Callable[..., Any] = module.running_server
    return launcher


@pytest.fixture(scope="session")
def artefact_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("EMBEDRT_TEST_ARTEFACTS")
    root = Path(configured).resolve() if configured else tmp_path_factory.mktemp("artefacts")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _artefact(root: Path, name: str, build: Callable[[Path], None]) -> Path:
    """Build ``root/name`` (once per session) where the [export] extra is installed; without
    it, reuse the artefact an earlier run left there. Building afresh means an artefact made
    by older export code is never what the tests check.

    Several pytest processes of one test run (``make test-full`` runs two side by side) share
    the folder: with EMBEDRT_TEST_RUN set, the first to need an artefact builds it under a lock
    and stamps it with that run id, and the others wait for it and reuse it.
    """
    target = root / name
    if not HAS_EXPORT:
        if (target / "manifest.json").is_file():
            return target
        pytest.skip(f"artefact {name} is not under {root} and the [export] extra is missing")
    run = os.environ.get("EMBEDRT_TEST_RUN", "")
    stamp = root / f".{name}.test-run"
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if run and (target / "manifest.json").is_file() and stamp.is_file() and stamp.read_text() == run:
            return target
        stamp.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        build(target)
        if run:
            stamp.write_text(run)
    return target


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory: pytest.TempPathFactory, tiny_models: ModuleType) -> dict[str, Path]:
    """Sentence-transformers folders of the tiny models (needs the [export] extra)."""
    if not HAS_EXPORT:
        pytest.skip("building tiny models needs the [export] extra")
    root = tmp_path_factory.mktemp("tiny-sources")
    return {arch: tiny_models.build(root, arch) for arch in ("bert", "distilbert")}


@pytest.fixture(scope="session")
def tiny_encoder_sources(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: ModuleType
) -> dict[str, Path]:
    """Sentence-transformers folders of tiny MPNet, RoBERTa (byte-level BPE) and XLM-RoBERTa
    (SentencePiece Unigram), from ``_tiny_models``."""
    if not HAS_EXPORT:
        pytest.skip("building tiny models needs the [export] extra")
    root = tmp_path_factory.mktemp("tiny-encoders")
    return {arch: tiny_models.build(root, arch) for arch in tiny_models.ENCODERS}


def _exported(request: pytest.FixtureRequest, name: str, arch: str | None, variant: str) -> Path:
    """``arch`` (a tiny model; None: the bundled MiniLM) exported as ``variant``, parity checked."""

    def build(target: Path) -> None:
        from embedrt.export import ExportOptions, export_model

        source = None if arch is None else request.getfixturevalue("tiny_sources")[arch]
        export_model(source, target, ExportOptions(variant=variant))

    return _artefact(request.getfixturevalue("artefact_root"), name, build)


@pytest.fixture(scope="session")
def tiny_bert(request: pytest.FixtureRequest) -> Path:
    """Artefact of the tiny BERT: mean pooling, normalised, token_type_ids, max 24 tokens."""
    return _exported(request, "tiny-bert", "bert", "fp32")


@pytest.fixture(scope="session")
def tiny_distilbert(request: pytest.FixtureRequest) -> Path:
    """Artefact of the tiny DistilBERT: CLS pooling, not normalised, no token_type_ids."""
    return _exported(request, "tiny-distilbert", "distilbert", "fp32")


@pytest.fixture(scope="session")
def tiny_bert_int8(request: pytest.FixtureRequest) -> Path:
    """The tiny BERT as int8 (blocks layout), parity checked."""
    return _exported(request, "tiny-bert-int8", "bert", "int8")


@pytest.fixture(scope="session")
def tiny_distilbert_int8(request: pytest.FixtureRequest) -> Path:
    """The tiny DistilBERT as int8 (blocks layout), parity checked."""
    return _exported(request, "tiny-distilbert-int8", "distilbert", "int8")


@pytest.fixture(scope="session")
def tiny_bert_int8_edge(request: pytest.FixtureRequest) -> Path:
    """The tiny BERT as int8-edge (4-bit embedding table), parity checked."""
    return _exported(request, "tiny-bert-int8-edge", "bert", "int8-edge")


@pytest.fixture(scope="session")
def tiny_bert_int4_edge(request: pytest.FixtureRequest) -> Path:
    """The tiny BERT as int4-edge (MatMulNBits), parity checked."""
    return _exported(request, "tiny-bert-int4-edge", "bert", "int4-edge")


def _exported_on_openvino(request: pytest.FixtureRequest, name: str, arch: str | None) -> Path:
    """As :func:`_exported` for the ``bf16`` variant, whose export runs OpenVINO (the
    [openvino] extra); without the [export] extra an earlier run's artefact is reused."""
    if HAS_EXPORT and importlib.util.find_spec("openvino") is None:
        pytest.skip("exporting the bf16 variant needs the [openvino] extra")
    return _exported(request, name, arch, "bf16")


@pytest.fixture(scope="session")
def tiny_bert_bf16(request: pytest.FixtureRequest) -> Path:
    """The tiny BERT as bf16 (OpenVINO at bfloat16 precision), parity checked."""
    return _exported_on_openvino(request, "tiny-bert-bf16", "bert")


@pytest.fixture(scope="session")
def minilm_bf16(request: pytest.FixtureRequest) -> Path:
    """The bundled all-MiniLM-L6-v2 as bf16 (OpenVINO), checked against torch at export."""
    return _exported_on_openvino(request, "minilm-bf16", None)


@pytest.fixture(scope="session")
def tiny_bert_per_token(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The tiny BERT's fp32 graph quantised in the per-token layout: (model file, record)."""
    if not HAS_EXPORT:
        pytest.skip("quantising needs the [export] extra")
    from embedrt.export import quantize
    from embedrt.runtime import Manifest

    out = tmp_path_factory.mktemp("per-token") / "model.onnx"
    feeds = quantize.calibration_feeds(
        tiny_bert / "tokenizer.json", max_seq_length=Manifest.load(tiny_bert).max_seq_length
    )
    recipe = quantize.recipe_for("int8", layout="per-token")
    return out, quantize.quantize(tiny_bert / "model.onnx", out, recipe, calibration=feeds)


@pytest.fixture(scope="session")
def minilm_fp32(request: pytest.FixtureRequest) -> Path:
    """The bundled all-MiniLM-L6-v2 exported as fp32 (checked against torch at export)."""
    return _exported(request, "minilm-fp32", None, "fp32")


@pytest.fixture(scope="session")
def minilm_int8(request: pytest.FixtureRequest) -> Path:
    """The bundled all-MiniLM-L6-v2 exported as int8 (checked against torch at export)."""
    return _exported(request, "minilm-int8", None, "int8")


def _exported_catalogue(request: pytest.FixtureRequest, name: str, model: str, variant: str) -> Path:
    """Catalogue model ``model`` exported as ``variant``, parity checked; skips when its
    weights (packages or parts) are not installed, naming what to install."""

    def build(target: Path) -> None:
        from embedrt.export import ExportOptions, export_model
        from embedrt.export.errors import MissingPartError

        try:
            export_model(model, target, ExportOptions(variant=variant))
        except MissingPartError as err:
            pytest.skip(str(err))

    return _artefact(request.getfixturevalue("artefact_root"), name, build)


@pytest.fixture(scope="session")
def mpnet_variant(request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """Export all-mpnet-base-v2 as a given variant (parity checked), once per session each."""
    made: dict[str, Path] = {}

    def export(variant: str) -> Path:
        if variant not in made:
            made[variant] = _exported_catalogue(request, f"mpnet-{variant}", "all-mpnet-base-v2", variant)
        return made[variant]

    return export


@pytest.fixture(scope="session")
def mpnet_fp32(request: pytest.FixtureRequest) -> Path:
    """all-mpnet-base-v2 (assembled from its PyPI parts) exported as fp32, parity checked."""
    return _exported_catalogue(request, "mpnet-fp32", "all-mpnet-base-v2", "fp32")


@pytest.fixture(scope="session")
def mpnet_int8(request: pytest.FixtureRequest) -> Path:
    """all-mpnet-base-v2 exported as int8, parity checked."""
    return _exported_catalogue(request, "mpnet-int8", "all-mpnet-base-v2", "int8")


@pytest.fixture(scope="session")
def stsb_dev() -> tuple[list[tuple[str, str]], list[float]]:
    """The STS-B dev pairs and gold scores shipped in bench/data (1,500 pairs)."""
    from embedrt.bench.workloads import read_sts

    return read_sts(STSB_DEV)


@pytest.fixture(scope="session")
def minilm_torch_stsb(minilm_fp32: Path, stsb_dev: tuple[list[tuple[str, str]], list[float]]) -> Any:
    """sentence-transformers on torch (the bundled all-MiniLM-L6-v2, batch 64) over the 3,000
    STS-B dev sentences, pairs flattened in order: computed once for every test that compares."""
    from embedrt.export.parity import reference_embeddings
    from embedrt.runtime import Manifest

    texts = [text for pair in stsb_dev[0] for text in pair]
    return reference_embeddings(Path(Manifest.load(minilm_fp32).source.path), texts, batch_size=64)


@pytest.fixture(scope="session")
def invariance() -> Callable[[Any, list[str], tuple[int, ...]], float]:
    """``invariance(embedder, texts, batch_sizes)``: the min cosine between each text embedded
    alone and inside shuffled mixed-length batches of each size (``_helpers.batch_invariance``)."""
    invariance: Callable[[Any, list[str], tuple[int, ...]], float] = helpers.batch_invariance
    return invariance


@pytest.fixture(scope="session")
def tiny_model_words(tiny_models: ModuleType) -> list[str]:
    return list(tiny_models.WORDS)
