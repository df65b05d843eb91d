"""The peers `embedrt bench` compares (OpenVINO f32/bf16, OpenVINO + NNCF int8, sentence-transformers'
ONNX backend int8) on the tiny model: they load, agree with torch, keep input order, batch the
texts as embedrt does, and are skipped with one clear line when their package is missing.

Correctness only: no timing is asserted.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_NEEDED = ("sentence_transformers", "torch", "openvino", "nncf")
_MISSING = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
if _MISSING:
    pytest.skip(f"peer tests need {', '.join(_MISSING)} ([export] and [peers] extras)",
                allow_module_level=True)

from embedrt.bench.registry import load_systems  # noqa: E402
from embedrt.bench.run import system_specs  # noqa: E402
from embedrt.bench.systems import SystemSpec, length_order_batches  # noqa: E402
from embedrt.runtime import Embedder  # noqa: E402
from embedrt.runtime.pooling import row_cosines  # noqa: E402
from tokenizers import Encoding  # noqa: E402

PEERS = ("openvino-f32", "openvino-bf16", "openvino-nncf-int8", "st-onnx-int8")


def _texts(words: list[str]) -> list[str]:
    """Mixed lengths, some over the tiny model's 24-token limit."""
    rng = np.random.default_rng(3)
    return [" ".join(rng.choice(words, int(n))) for n in rng.integers(2, 40, 20)]


@pytest.fixture(scope="module")
def loaded(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    work = tmp_path_factory.mktemp("peers")
    systems, statuses = load_systems(system_specs([tiny_bert], 1), ("fastembed",), work)
    return {"systems": {s.spec.name: s for s in systems}, "statuses": {s.spec.name: s for s in statuses},
            "work": work}


def test_every_peer_loads_with_its_settings(loaded: dict[str, object], tiny_bert: Path) -> None:
    statuses = loaded["statuses"]
    assert isinstance(statuses, dict)
    for name in PEERS:
        assert statuses[name].status == "ok", (name, statuses[name].reason)
    assert statuses["openvino-f32"].metadata["inference_precision"] == "f32"
    assert statuses["openvino-f32"].metadata["threads"] == 1
    # NNCF's and sentence-transformers' files are made in the run's work folder, not beside the model.
    work = loaded["work"]
    assert isinstance(work, Path)
    for name in ("openvino-nncf-int8", "st-onnx-int8"):
        assert Path(statuses[name].metadata["model_file"]).is_relative_to(work)
    source = Path(statuses["torch"].spec.path)
    assert not (source / "onnx").exists()  # the source model folder was not written to


def test_peers_agree_with_torch_and_keep_input_order(
    loaded: dict[str, object], tiny_model_words: list[str]
) -> None:
    systems = loaded["systems"]
    assert isinstance(systems, dict)
    texts = _texts(tiny_model_words)
    reference = systems["torch"].embed(texts, 8)
    floors = {"openvino-f32": 0.99999, "openvino-bf16": 0.99}
    for name in PEERS:
        vectors = systems[name].embed(texts, 8)
        assert vectors.shape == reference.shape and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
        cosines = row_cosines(vectors, reference)
        if name in floors:
            assert cosines.min() >= floors[name], (name, cosines.min())
        # Order: each row is that text's embedding (alone vs in mixed batches).
        alone = np.stack([systems[name].embed([t], 1)[0] for t in texts[:5]])
        assert row_cosines(alone, vectors[:5]).min() > 0.99, name
        # A shuffled row would match another text far worse than its own.
        assert row_cosines(alone, vectors[1:6]).min() < row_cosines(alone, vectors[:5]).min()


def test_other_libraries_get_embedrt_batches(tiny_bert: Path, tiny_model_words: list[str]) -> None:
    texts = _texts(tiny_model_words)
    embedder = Embedder.load(tiny_bert, threads=1, max_batch_tokens=10**9)
    formed: list[list[tuple[int, ...]]] = []
    original = embedder._embed_model_dim  # every inference call embed() makes goes through it

    def record(encodings: list[Encoding]) -> np.ndarray:
        formed.append(sorted(tuple(e.ids) for e in encodings))
        return original(encodings)

    embedder._embed_model_dim = record  # type: ignore[method-assign]
    embedder.embed(texts, batch_size=6)
    spec = SystemSpec("x", "sentence-transformers", "", 1, order_by=str(tiny_bert))
    ours = [sorted(tuple(embedder.tokenize([texts[i]])[0].ids) for i in rows)
            for rows in length_order_batches(spec, texts, 6)]
    assert len(formed) == 4 and ours == formed


def test_missing_openvino_is_one_clear_skip(tiny_bert: Path, tmp_path: Path) -> None:
    specs = [s for s in system_specs([tiny_bert], 1) if s.kind.startswith("openvino")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
        systems, statuses = load_systems(specs, (), tmp_path)
    assert systems == []
    for status in statuses:
        assert status.status == "skipped"
        assert status.reason.startswith("openvino is not installed") and "\n" not in status.reason


def test_nncf_peer_needs_its_work_folder(tiny_bert: Path) -> None:
    spec = next(s for s in system_specs([tiny_bert], 1) if s.kind == "openvino-nncf")
    systems, statuses = load_systems([spec], ())
    assert systems == [] and "not made" in statuses[0].reason
