# ruff: noqa: F811  (pytest fixtures imported by name are redefined as test parameters)
"""The trained MiniLM cross-encoder against sentence-transformers' CrossEncoder on torch.

The model is all-MiniLM-L6-v2 fine-tuned on one half of the shipped STS-B dev pairs (no
package ships the STS-B train split); everything here is measured on the other, held-out
half, grouped into queries: each held-out ``sentence1`` with its own ``sentence2`` and 19
``sentence2`` of other held-out pairs (seeded) as its candidates (``bench.rerank.query_groups``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _reranker_fixtures import STSB_DEV, reranker_artefact, stsb_cross_encoder  # noqa: F401
from embedrt.bench.rerank import positions
from embedrt.runtime import Reranker

pytestmark = pytest.mark.real_model

QUERIES = 60  # of the 749 held-out ones: 1,200 pairs, a few seconds per system


@pytest.fixture(scope="module")
def groups() -> list[tuple[str, list[str]]]:
    from embedrt.bench.rerank import query_groups
    from embedrt.export.rerank_train import split_stsb

    return query_groups(split_stsb(STSB_DEV).held_out)[:QUERIES]


@pytest.fixture(scope="module")
def torch_scores(stsb_cross_encoder: Path, groups: list[tuple[str, list[str]]]) -> np.ndarray:  # noqa: F811
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(stsb_cross_encoder), device="cpu", local_files_only=True)
    pairs = [(q, d) for q, docs in groups for d in docs]
    return np.asarray(model.predict(pairs, batch_size=32, show_progress_bar=False))


def test_fp32_matches_predict_with_identical_rankings(
    reranker_artefact: Callable[[str, str], Path],  # noqa: F811
    groups: list[tuple[str, list[str]]],
    torch_scores: np.ndarray,
) -> None:
    from embedrt.export.rerank_parity import agreement

    reranker = Reranker.load(reranker_artefact("stsb", "fp32"))
    scores = reranker.predict([(q, d) for q, docs in groups for d in docs])
    figures = agreement(torch_scores, scores, positions(groups))
    assert figures.max_abs_diff <= 1e-4
    assert figures.identical_rankings == 1.0
    assert np.ptp(torch_scores) > 0.3  # a trained model: scores spread over most of (0, 1)
    query, docs = groups[0]
    assert [r.index for r in reranker.rank(query, docs)] == list(
        np.argsort(-torch_scores[:20], kind="stable")
    )


def test_int8_ranks_as_torch_and_is_batch_invariant(
    reranker_artefact: Callable[[str, str], Path],  # noqa: F811
    groups: list[tuple[str, list[str]]],
    torch_scores: np.ndarray,
) -> None:
    from embedrt.export.rerank_parity import agreement

    reranker = Reranker.load(reranker_artefact("stsb", "int8"))
    pairs = [(q, d) for q, docs in groups for d in docs]
    scores = reranker.predict(pairs)
    figures = agreement(torch_scores, scores, positions(groups))
    assert figures.mean_top_k_agreement >= 0.95, figures.summary()
    assert figures.spearman >= 0.99, figures.summary()
    alone = np.array([reranker.predict([p])[0] for p in pairs[:200]])
    assert np.abs(alone - scores[:200]).max() <= 1e-6  # batch of 32 vs alone


def test_long_pair_is_truncated_as_the_torch_tokenizer_does(
    stsb_cross_encoder: Path,  # noqa: F811
    reranker_artefact: Callable[[str, str], Path],  # noqa: F811
) -> None:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(stsb_cross_encoder), device="cpu", local_files_only=True)
    reranker = Reranker.load(reranker_artefact("stsb", "fp32"))
    query = "What did the committee decide about the budget of the new hospital wing? " * 3
    document = "The committee met on Tuesday and discussed many items at length. " * 30
    pair = [(query, document), (document, query)]
    encodings = reranker.tokenize(pair)
    for (a, b), encoding in zip(pair, encodings, strict=True):
        expected = model.tokenizer(a, b, truncation="longest_first", max_length=128)
        assert encoding.ids == expected["input_ids"] and encoding.type_ids == expected["token_type_ids"]
        assert len(encoding.ids) == 128
    np.testing.assert_allclose(reranker.predict(pair), model.predict(pair), atol=1e-4)


def test_bf16_on_openvino_keeps_the_ranking(
    reranker_artefact: Callable[[str, str], Path],  # noqa: F811
    groups: list[tuple[str, list[str]]],
    torch_scores: np.ndarray,
) -> None:
    pytest.importorskip("openvino", reason="the bf16 variant runs on OpenVINO (the [openvino] extra)")
    from embedrt.export.rerank_parity import agreement

    reranker = Reranker.load(reranker_artefact("stsb", "bf16"))
    scores = reranker.predict([(q, d) for q, docs in groups for d in docs])
    figures = agreement(torch_scores, scores, positions(groups))
    assert figures.max_abs_diff <= 3e-2 and figures.spearman >= 0.999, figures.summary()
    assert figures.mean_top_k_agreement >= 0.97, figures.summary()
