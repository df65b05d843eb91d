"""Parity of the bundled all-MiniLM-L6-v2 against sentence-transformers on torch.

fp32 must agree per sentence to cosine >= 0.99999 and max |diff| <= 1e-5, on texts over
128 and over 256 tokens, non-ASCII text, an empty string, and mixed lengths in a batch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("sentence_transformers") is None:
    pytest.skip("parity tests need the [export] extra (sentence-transformers)", allow_module_level=True)

from embedrt.export.parity import compare, load_reference, validation_sentences
from embedrt.runtime import Embedder, Manifest, cosine_similarity

pytestmark = pytest.mark.real_model
BANK = ("I deposited money in the bank.", "I sat by the river bank.")
MIN_COSINE, MAX_ABS_DIFF = 0.99999, 1e-5


@pytest.fixture(scope="module")
def reference(minilm_fp32: Path) -> Any:
    return load_reference(Path(Manifest.load(minilm_fp32).source.path))


@pytest.fixture(scope="module")
def embedder(minilm_fp32: Path) -> Embedder:
    return Embedder.load(minilm_fp32)


def _token_count(reference: Any, text: str) -> int:
    return len(reference.tokenizer(text, truncation=False)["input_ids"])


def test_manifest_uses_sentence_transformers_limit(embedder: Embedder) -> None:
    assert embedder.max_seq_length == 256  # not tokenizer.json's 128, not config's 512
    assert embedder.dim == 384 and embedder.manifest.pooling == "mean"


def test_fixed_set_covers_the_traps(reference: Any) -> None:
    lengths = [_token_count(reference, t) for t in validation_sentences()]
    assert any(128 < n <= 256 for n in lengths) and any(n > 256 for n in lengths)
    assert "" in validation_sentences()
    assert any(not t.isascii() for t in validation_sentences())


def test_parity_on_fixed_set_in_one_mixed_batch(embedder: Embedder, reference: Any) -> None:
    texts = validation_sentences()
    expected = reference.encode(texts, batch_size=64, convert_to_numpy=True)
    report = compare(expected, embedder.embed(texts, batch_size=64), MIN_COSINE, MAX_ABS_DIFF)
    assert report.passed, report.summary()


def test_long_inputs_are_cut_at_256_not_128(embedder: Embedder, reference: Any) -> None:
    long_text = max(validation_sentences(), key=len)
    ours = embedder.encode([long_text])
    assert ours.truncated == (0,) and ours.token_counts[0] == 256
    at_128 = reference.tokenizer.decode(reference.tokenizer(long_text)["input_ids"][1:127])
    # Had the runtime cut at 128 (tokenizer.json's setting), it would match this instead.
    assert cosine_similarity(ours.vectors[0], embedder.embed([at_128])[0]) < 0.99


def test_seed_bank_sentences(embedder: Embedder, reference: Any) -> None:
    ours = cosine_similarity(*embedder.embed(list(BANK)))
    torch_score = cosine_similarity(*reference.encode(list(BANK), convert_to_numpy=True))
    assert abs(ours - torch_score) <= 1e-5, (ours, torch_score)


def test_parity_on_stsb_dev_sentences(
    embedder: Embedder, minilm_torch_stsb: Any, stsb_dev: tuple[list[tuple[str, str]], list[float]]
) -> None:
    texts = [text for pair in stsb_dev[0] for text in pair]
    assert len(texts) == 3000
    expected = minilm_torch_stsb  # reference.encode(texts, batch_size=64), shared with other tests
    report = compare(expected, embedder.embed(texts, batch_size=64), MIN_COSINE, MAX_ABS_DIFF)
    print(f"\nSTS-B dev parity (fp32): {report.summary()}")
    assert report.passed, report.summary()
