"""The runtime on tiny exported models: shapes, order, pooling, truncation, bad input.

Runs without the [export] extra when $EMBEDRT_TEST_ARTEFACTS holds artefacts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from embedrt.runtime import Embedder, InputTooLongError, cosine_similarity
from embedrt.runtime.cpus import usable_cpus
from tokenizers import Tokenizer

TEXTS = [
    "the cat sat on the road",
    "",
    "a man is playing guitar",
    "hello",
    "the quick brown fox jumps over the lazy dog and the cat and the dog",
    "café über naïve",
]


def _by_hand(artefact: Path, text: str) -> np.ndarray:
    """One unpadded text straight through onnxruntime, pooled per the manifest."""
    embedder = Embedder.load(artefact)
    manifest = embedder.manifest
    tokenizer = Tokenizer.from_file(str(artefact / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(manifest.max_seq_length)
    ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in manifest.inputs:
        feeds["token_type_ids"] = np.zeros_like(ids)
    session = ort.InferenceSession(str(artefact / "model.onnx"), providers=["CPUExecutionProvider"])
    hidden = session.run([manifest.output], feeds)[0][0]
    vector = hidden[0] if manifest.pooling == "cls" else hidden.mean(axis=0)
    return vector / np.linalg.norm(vector) if manifest.normalize else vector


@pytest.fixture(params=["tiny_bert", "tiny_distilbert"])
def artefact(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def test_embed_shape_dtype_and_layout(artefact: Path) -> None:
    embedder = Embedder.load(artefact)
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), embedder.dim)
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
    assert np.isfinite(vectors).all()


def test_padded_batches_equal_unpadded_single_texts(artefact: Path) -> None:
    # Mask-aware pooling: padding in a mixed-length batch must not change a vector.
    embedder = Embedder.load(artefact)
    batched = embedder.embed(TEXTS, batch_size=len(TEXTS))
    for row, text in zip(batched, TEXTS, strict=True):
        np.testing.assert_allclose(row, _by_hand(artefact, text), atol=2e-6)


def test_results_in_input_order_whatever_the_batch_size(artefact: Path) -> None:
    embedder = Embedder.load(artefact)
    singles = np.stack([embedder.embed([t])[0] for t in TEXTS])
    for size in (1, 2, 4, 64):
        np.testing.assert_allclose(embedder.embed(TEXTS, batch_size=size), singles, atol=2e-6)


def test_normalisation_follows_manifest(tiny_bert: Path, tiny_distilbert: Path) -> None:
    normalised = Embedder.load(tiny_bert).embed(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, atol=1e-5)
    raw = Embedder.load(tiny_distilbert).embed(TEXTS)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)


def test_padding_to_a_multiple_changes_nothing(artefact: Path) -> None:
    plain = Embedder.load(artefact).embed(TEXTS)
    bucketed = Embedder.load(artefact, pad_to_multiple_of=16).embed(TEXTS)
    np.testing.assert_allclose(bucketed, plain, atol=2e-6)


def test_token_budget_splits_batches_without_changing_results(
    artefact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"{'word ' * (3 * i)}end" for i in range(12)]
    whole = Embedder.load(artefact, max_batch_tokens=10_000).embed(texts, batch_size=12)
    embedder = Embedder.load(artefact, max_batch_tokens=40)
    calls: list[tuple[int, int]] = []
    run = embedder._embed_model_dim  # one inference call (encode truncates dimensions after)

    def counted(encodings):  # type: ignore[no-untyped-def]
        calls.append((len(encodings), max(len(e.ids) for e in encodings)))
        return run(encodings)

    monkeypatch.setattr(embedder, "_embed_model_dim", counted)
    split = embedder.embed(texts, batch_size=12)
    np.testing.assert_allclose(split, whole, atol=2e-6)
    assert sum(rows for rows, _ in calls) == len(texts) and len(calls) > 1
    # Equal row counts of about the budget: never more than one row over it.
    assert all(rows == 1 or (rows - 1) * width <= 40 for rows, width in calls)


def test_bad_token_budget_is_rejected(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="max_batch_tokens must be a positive integer, got 0"):
        Embedder.load(tiny_bert, max_batch_tokens=0)


def test_graph_without_token_type_ids(tiny_distilbert: Path) -> None:
    embedder = Embedder.load(tiny_distilbert)
    assert "token_type_ids" not in embedder.manifest.inputs
    assert embedder.embed(["hello world"]).shape == (1, embedder.dim)


def test_empty_input_and_empty_string(tiny_bert: Path) -> None:
    embedder = Embedder.load(tiny_bert)
    empty = embedder.embed([])
    assert empty.shape == (0, embedder.dim) and empty.dtype == np.float32
    vector = embedder.embed([""])
    assert vector.shape == (1, embedder.dim) and np.isfinite(vector).all()


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["ok", 3, "fine"], "input 1 is int, not str"),
        (["ok", None], "input 1 is NoneType, not str"),
        ("a single string", "wrap it in a list"),
        (b"bytes", "wrap it in a list"),
    ],
)
def test_non_strings_raise_type_error_naming_position(tiny_bert: Path, texts: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        Embedder.load(tiny_bert).embed(texts)  # type: ignore[arg-type]


def test_truncation_is_counted_and_logged_once(tiny_bert: Path, caplog: pytest.LogCaptureFixture) -> None:
    embedder = Embedder.load(tiny_bert)
    long_text = "the cat sat on the road " * 20  # far over the tiny model's 24 tokens
    texts = ["hello", long_text, "world", long_text]
    with caplog.at_level(logging.WARNING, logger="embedrt"):
        result = embedder.encode(texts)
    assert result.truncated == (1, 3)
    assert result.token_counts.tolist()[1] == embedder.max_seq_length == 24
    lines = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(lines) == 1 and "2 of 4" in lines[0].getMessage()
    # Truncation keeps the start: the same as embedding the first tokens only.
    prefix = " ".join(long_text.split()[:22])  # 22 words + [CLS] + [SEP] = 24 tokens
    np.testing.assert_allclose(result.vectors[1], embedder.embed([prefix])[0], atol=2e-6)


def test_truncate_false_raises_naming_input_length_and_limit(tiny_bert: Path) -> None:
    embedder = Embedder.load(tiny_bert)
    with pytest.raises(InputTooLongError, match=r"input 1 has 32 tokens; the model accepts at most 24"):
        embedder.embed(["fine", "the cat sat on the road " * 5], truncate=False)
    assert embedder.embed(["fine"], truncate=False).shape == (1, embedder.dim)


def test_default_threads_follow_usable_cpus(tiny_bert: Path) -> None:
    assert Embedder.load(tiny_bert).threads == usable_cpus()
    assert Embedder.load(tiny_bert, threads=1).threads == 1
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        Embedder.load(tiny_bert, threads=0)


def test_cosine_similarity_shapes_and_values() -> None:
    a = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    b = np.array([1.0, 1.0, 0.0], dtype=np.float32)
    matrix = np.stack([a, b, -a])
    assert cosine_similarity(a, b) == pytest.approx(1 / np.sqrt(2), abs=1e-6)
    np.testing.assert_allclose(cosine_similarity(a, matrix), [1.0, 1 / np.sqrt(2), -1.0], atol=1e-6)
    np.testing.assert_allclose(cosine_similarity(matrix, a), [1.0, 1 / np.sqrt(2), -1.0], atol=1e-6)
    pairwise = cosine_similarity(matrix, matrix[:2])
    assert pairwise.shape == (3, 2)
    np.testing.assert_allclose(pairwise[2], [-1.0, -1 / np.sqrt(2)], atol=1e-6)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.ones(3), np.ones(4), "dimensions differ"),
        (np.ones((2, 2, 2)), np.ones(2), "must be 1-D or 2-D"),
        (np.zeros(3), np.ones(3), "row 0 of a is all zeros"),
    ],
)
def test_cosine_similarity_rejects_bad_arguments(a: np.ndarray, b: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cosine_similarity(a, b)


def test_warns_once_per_load_when_cpu_lacks_the_artefacts_features(
    tiny_bert: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import shutil

    copy = tmp_path / "artefact"
    shutil.copytree(tiny_bert, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["recipe"]["requires_cpu_flags"] = ["no_such_cpu_flag_x"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo to read CPU features from")
    for _ in range(2):  # each load warns once, whatever loaded before (no process-wide state)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="embedrt"):
            Embedder.load(copy)
        lines = [r.getMessage() for r in caplog.records if "CPU features this CPU lacks" in r.getMessage()]
        assert len(lines) == 1 and "no_such_cpu_flag_x" in lines[0] and str(copy) in lines[0]


def test_row_cosines_pair_rows_and_refuse_mismatched_shapes() -> None:
    from embedrt.runtime.pooling import row_cosines

    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [1.0, -1.0], [1.0, 0.0]])
    np.testing.assert_allclose(row_cosines(a, b), [1.0, 0.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="two 2-D arrays of one shape"):
        row_cosines(a, b[:2])
