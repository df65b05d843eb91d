"""The texts a benchmark embeds: short, medium and long buckets, and STS pairs.

With an STS file, short texts are its sentences, and medium and long texts join
consecutive sentences up to a token target. Without one, a seeded generator writes
sentences from a fixed word list, so every run embeds the same texts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from embedrt.runtime.errors import EmbedrtError

logger = logging.getLogger(__name__)

BUCKETS = ("short", "medium", "long")
# Token targets (special tokens included). Long texts straddle 256 so that some exceed
# sentence-transformers' limit and all exceed the 128 of all-MiniLM-L6-v2's tokenizer.json.
MEDIUM_TOKENS = (24, 36)
LONG_TOKENS = (160, 340)
THRESHOLDS = (128, 256)
# The STS-B dev set shipped as embedrt.bench's package data (licence and attribution beside it).
SHIPPED_STS = Path(__file__).resolve().parent / "data" / "stsb-dev" / "dev.tsv"
_WORDS = (
    "the a one this that some every many few all people time year way day man woman child "
    "world life hand part place case week company system program question work government "
    "number night point home water room mother area money story fact month lot right study "
    "book eye job word business issue side kind head house service friend father power hour "
    "game line end member law car city community name president team minute idea kid body "
    "information back parent face others level office door health person art war history "
    "party result change morning reason research girl guy moment air teacher force education "
    "is was has makes takes sees finds gives tells asks plays runs moves lives believes holds "
    "brings writes provides sits stands loses pays meets includes continues learns leads "
    "understands watches follows stops creates speaks reads spends grows opens walks wins "
    "good new first last long great little own other old right big high different small large "
    "next early young important public bad same able quickly slowly often never always "
    "in on at with from into during including until against among throughout despite towards"
).split()


class StsFileError(EmbedrtError, ValueError):
    """The STS file given with ``--sts`` is not a readable STS-B style TSV."""


@dataclass(frozen=True)
class Workload:
    """Texts grouped by length bucket, plus STS pairs with gold scores when a file was given.

    Attributes:
        buckets: bucket name -> texts.
        sts_pairs: ``(sentence1, sentence2)`` pairs; empty without an STS file.
        sts_scores: gold similarity per pair.
        source: where the texts came from (the STS path or ``generated``).
    """

    buckets: dict[str, list[str]]
    sts_pairs: list[tuple[str, str]]
    sts_scores: list[float]
    source: str


def read_sts(path: Path) -> tuple[list[tuple[str, str]], list[float]]:
    """Read an STS-B style TSV (header ``sentence1 sentence2 score``; no CSV quoting).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        StsFileError: the header lacks a column, or a row has too few fields or a bad score.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    try:
        first, second, score = (header.index(c) for c in ("sentence1", "sentence2", "score"))
    except ValueError as err:
        raise StsFileError(f"{path}: header {header} needs sentence1, sentence2 and score") from err
    pairs: list[tuple[str, str]] = []
    scores: list[float] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) <= max(first, second, score):
            raise StsFileError(f"{path}:{number}: expected {len(header)} tab-separated fields")
        try:
            scores.append(float(fields[score]))
        except ValueError as err:
            raise StsFileError(f"{path}:{number}: score {fields[score]!r} is not a number") from err
        pairs.append((fields[first], fields[second]))
    return pairs, scores


def default_sts() -> Path | None:
    """The shipped STS-B dev file, or None where an install left the package data out."""
    return SHIPPED_STS if SHIPPED_STS.is_file() else None


def generated_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` deterministic sentences of 5-16 words from a fixed word list."""
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(count):
        words = [_WORDS[i] for i in rng.integers(0, len(_WORDS), int(rng.integers(5, 17)))]
        sentences.append(" ".join(words).capitalize() + ".")
    return sentences


def join_to_targets(
    sentences: Sequence[str], lengths: Sequence[int], targets: Sequence[int]
) -> list[str]:
    """Join consecutive sentences (cycling) until each text reaches its token target.

    ``lengths`` are the sentences' token counts without special tokens; two are added per text.
    """
    texts: list[str] = []
    position = 0
    for target in targets:
        parts: list[str] = []
        tokens = 2
        while tokens < target:
            parts.append(sentences[position % len(sentences)])
            tokens += lengths[position % len(sentences)]
            position += 1
        texts.append(" ".join(parts))
    return texts


def build_workload(
    tokenizer_path: Path, sizes: dict[str, int], sts_path: Path | None, sts_pairs: int | None
) -> Workload:
    """Build the buckets (``sizes``: texts per bucket) from the STS file or generated text.

    Args:
        tokenizer_path: a ``tokenizer.json`` used to reach the token targets.
        sizes: number of texts per bucket name.
        sts_path: STS-B style TSV, or None to generate texts.
        sts_pairs: keep at most this many STS pairs (None: all).
    """
    from tokenizers import Tokenizer

    if sts_path is not None:
        pairs, scores = read_sts(sts_path)
        pairs, scores = pairs[:sts_pairs], scores[:sts_pairs]
        sentences = list(dict.fromkeys(s for pair in pairs for s in pair))
        source = str(sts_path)
    else:
        pairs, scores = [], []
        sentences = generated_sentences(max(sizes.values()) * 4)
        source = "generated"
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    lengths = [len(e.ids) for e in tokenizer.encode_batch(sentences, add_special_tokens=False)]
    rng = np.random.default_rng(1)
    buckets = {
        "short": sentences[: sizes["short"]],
        "medium": join_to_targets(
            sentences, lengths, rng.integers(*MEDIUM_TOKENS, sizes["medium"]).tolist()),
        "long": join_to_targets(
            sentences[::-1], lengths[::-1], rng.integers(*LONG_TOKENS, sizes["long"]).tolist()),
    }
    return Workload(buckets, pairs, scores, source)


def token_counts(tokenizer_path: Path, texts: Sequence[str]) -> np.ndarray:
    """Untruncated token counts (special tokens included) of ``texts``."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return np.array([len(e.ids) for e in tokenizer.encode_batch(list(texts))], dtype=np.int64)


def length_stats(counts: np.ndarray) -> dict[str, float | int]:
    """Mean, spread and range of token counts, and how many exceed each threshold."""
    stats: dict[str, float | int] = {
        "count": int(counts.size),
        "token_mean": float(counts.mean()) if counts.size else 0.0,
        "token_std": float(counts.std()) if counts.size else 0.0,
        "token_min": int(counts.min()) if counts.size else 0,
        "token_max": int(counts.max()) if counts.size else 0,
    }
    for threshold in THRESHOLDS:
        stats[f"over_{threshold}"] = int((counts > threshold).sum())
    return stats
