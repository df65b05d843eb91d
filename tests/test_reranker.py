# ruff: noqa: F811  (pytest fixtures imported by name are redefined as test parameters)
"""Cross-encoder export and the torch-free Reranker, on tiny random cross-encoders.

Each tiny cross-encoder (BERT with one logit and with three, XLM-RoBERTa, ModernBERT) is
exported and its scores compared with sentence-transformers' ``CrossEncoder.predict`` on
torch; ``rank`` is compared with ``CrossEncoder.rank`` entry by entry (ties included), pair
tokenisation with the model's own Hugging Face tokenizer (a pair over the length limit), and
the int8 variant is checked for batch invariance. The trained MiniLM reranker is in
test_reranker_real.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _reranker_fixtures import reranker_artefact, stsb_cross_encoder, tiny_cross_encoders  # noqa: F401
from embedrt.runtime import ArtefactError, Reranker, RerankInputError
from embedrt.runtime.manifest import Manifest

pytestmark = pytest.mark.export

QUERY = "a man is playing the guitar"
DOCUMENTS = [
    "the man sat by the river bank",
    "a woman is playing the piano",
    "the quick brown fox jumps over the lazy dog",
    "a man is playing music on a guitar",
    "",
    "the cat sat on the house and the dog sat by the tree in the water of the river bank",
    "the man sat by the river bank",  # a duplicate: tied scores keep input order
]


def _cross_encoder(folder: Path) -> object:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(folder), device="cpu", local_files_only=True)


@pytest.mark.parametrize("name", ["bert", "bert-3", "xlm-roberta", "modernbert"])
def test_fp32_scores_match_cross_encoder_predict(
    name: str, tiny_cross_encoders: dict[str, Path], reranker_artefact: Callable[[str, str], Path]
) -> None:
    artefact = reranker_artefact(name, "fp32")
    manifest = Manifest.load(artefact)
    assert manifest.task == "rerank" and manifest.output == "logits"
    assert manifest.rerank is not None
    parity = manifest.rerank["parity"]
    assert isinstance(parity, dict) and parity["passed"] is True
    assert isinstance(parity["max_abs_diff"], float) and parity["max_abs_diff"] <= 1e-4
    labels, activation = {"bert-3": (3, "identity")}.get(name, (1, "sigmoid"))
    assert manifest.rerank["num_labels"] == labels and manifest.rerank["activation"] == activation
    pairs = [(QUERY, d) for d in DOCUMENTS] + [(d, QUERY) for d in DOCUMENTS]
    expected = np.asarray(_cross_encoder(tiny_cross_encoders[name]).predict(pairs))  # type: ignore[attr-defined]
    got = Reranker.load(artefact).predict(pairs)
    assert got.shape == expected.shape == ((len(pairs),) if labels == 1 else (len(pairs), labels))
    assert np.abs(got - expected).max() <= 1e-5
    # The scores spread far beyond the differences measured: the comparison can fail.
    assert np.ptp(expected, axis=0).min() > 10 * np.abs(got - expected).max()


def test_rank_orders_as_cross_encoder_rank(
    tiny_cross_encoders: dict[str, Path], reranker_artefact: Callable[[str, str], Path]
) -> None:
    reranker = Reranker.load(reranker_artefact("bert", "fp32"))
    expected = _cross_encoder(tiny_cross_encoders["bert"]).rank(  # type: ignore[attr-defined]
        QUERY, DOCUMENTS, return_documents=True
    )
    got = reranker.rank(QUERY, DOCUMENTS, return_documents=True)
    assert [r.index for r in got] == [int(e["corpus_id"]) for e in expected]
    assert [r.text for r in got] == [e["text"] for e in expected]
    np.testing.assert_allclose([r.score for r in got], [float(e["score"]) for e in expected], atol=1e-5)
    duplicates = [r.index for r in got if r.index in (0, 6)]
    assert duplicates == [0, 6]  # equal scores: input order, as sorted(..., reverse=True) keeps it
    top = reranker.rank(QUERY, DOCUMENTS, top_k=3)
    assert [r.index for r in top] == [r.index for r in got[:3]] and all(r.text is None for r in top)
    assert reranker.rank(QUERY, []) == []


@pytest.mark.parametrize("name", ["bert", "xlm-roberta", "modernbert"])
def test_pair_tokenisation_matches_the_hf_tokenizer_over_the_limit(
    name: str, tiny_cross_encoders: dict[str, Path], reranker_artefact: Callable[[str, str], Path]
) -> None:
    reranker = Reranker.load(reranker_artefact(name, "fp32"))
    model = _cross_encoder(tiny_cross_encoders[name])
    long_query = " ".join(["the quick brown fox"] * 5)  # 20 words: with a document, over 24 tokens
    long_doc = " ".join(["a man is playing the guitar by the river bank"] * 4)
    pairs = [(long_query, long_doc), (QUERY, long_doc), (long_doc, QUERY), ("", long_doc)]
    tokenizer = model.tokenizer  # type: ignore[attr-defined]
    limit = reranker.max_seq_length
    for (query, doc), encoding in zip(pairs, reranker.tokenize(pairs), strict=True):
        expected = tokenizer(query, doc, truncation="longest_first", max_length=limit)
        assert encoding.ids == expected["input_ids"]
        assert len(encoding.ids) == limit
        if "token_type_ids" in expected:
            assert encoding.type_ids == expected["token_type_ids"]
    with pytest.raises(Exception, match="truncate"):
        reranker.tokenize(pairs, truncate=False)


@pytest.mark.parametrize("name", ["bert", "modernbert"])  # blocks layout; per-token fallback
def test_int8_is_quantised_batch_invariant_and_close(
    name: str, tiny_cross_encoders: dict[str, Path], reranker_artefact: Callable[[str, str], Path]
) -> None:
    import onnx

    artefact = reranker_artefact(name, "int8")
    manifest = Manifest.load(artefact)
    assert manifest.recipe.quantisation is not None
    assert manifest.recipe.quantisation.quantised_matmuls >= 8  # 2 layers x (Q, K, V, O, up, down)
    assert manifest.recipe.quantisation.layout == ("blocks" if name == "bert" else "per-token")
    graph = onnx.load(str(artefact / "model.onnx")).graph
    head = [n for n in graph.node if n.name.startswith("head/")]
    assert {n.op_type for n in head} >= {"Gather", "MatMul", "Add"}  # the head stays float
    assert not any("Integer" in n.op_type or "Quantize" in n.op_type for n in head)
    reranker = Reranker.load(artefact)
    pairs = [(q, d) for q in DOCUMENTS[:4] for d in DOCUMENTS]
    alone = np.array([reranker.predict([p])[0] for p in pairs])
    for size in (3, 8, 32):
        batched = reranker.predict(pairs, batch_size=size)
        assert np.abs(batched - alone).max() <= 1e-6
    expected = np.asarray(_cross_encoder(tiny_cross_encoders[name]).predict(pairs))  # type: ignore[attr-defined]
    assert np.abs(alone - expected).max() <= 0.02


def test_bad_inputs_are_refused_with_clear_errors(reranker_artefact: Callable[[str, str], Path]) -> None:
    reranker = Reranker.load(reranker_artefact("bert", "fp32"))
    with pytest.raises(RerankInputError, match="documents must be a list of strings"):
        reranker.rank(QUERY, "one document")
    with pytest.raises(RerankInputError, match="document 1 is int"):
        reranker.rank(QUERY, ["a", 3])  # type: ignore[list-item]
    with pytest.raises(RerankInputError, match="query must be a string"):
        reranker.rank(None, ["a"])  # type: ignore[arg-type]
    with pytest.raises(RerankInputError, match="pair 0 is not two strings"):
        reranker.predict([("a", "b", "c")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="top_k"):
        reranker.rank(QUERY, ["a"], top_k=-1)
    three = Reranker.load(reranker_artefact("bert-3", "fp32"))
    with pytest.raises(RerankInputError, match="one-label model; this one has 3"):
        three.rank(QUERY, ["a"])


def test_an_embedding_artefact_is_not_a_reranker(tiny_bert: Path) -> None:
    with pytest.raises(ArtefactError, match="not a reranker"):
        Reranker.load(tiny_bert)


def test_a_reranker_is_not_an_embedding_model(reranker_artefact: Callable[[str, str], Path]) -> None:
    from embedrt.runtime import Embedder

    with pytest.raises(ArtefactError, match="'rerank' artefact .* not an embedding model; load it with"):
        Embedder.load(reranker_artefact("bert", "fp32"))


def test_training_split_is_fixed_and_disjoint() -> None:
    from _reranker_fixtures import STSB_DEV
    from embedrt.export.rerank_train import split_stsb

    first, again = split_stsb(STSB_DEV), split_stsb(STSB_DEV)
    assert first == again
    assert len(first.train) == len(first.held_out) == 749  # 1,500 rows, two of them repeated
    train_rows = {(p.sentence1, p.sentence2) for p in first.train}
    assert not train_rows & {(p.sentence1, p.sentence2) for p in first.held_out}
