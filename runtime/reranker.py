"""Cross-encoder reranking without torch: tokenise pairs, run the ONNX graph, apply the activation.

>>> from embedrt.runtime import Reranker
>>> reranker = Reranker.load("models/minilm-stsb-cross-encoder/int8")
>>> reranker.rank("A man is playing a guitar.", ["A man plays guitar.", "A cat sleeps."])
[RankedDocument(index=0, score=0.93...), RankedDocument(index=1, score=0.02...)]

Pairs are tokenised as the model's Hugging Face tokenizer does with sentence-transformers'
settings: ``tokenizer(queries, documents, truncation="longest_first", max_length=L)``, i.e.
the pair template of ``tokenizer.json`` (``[CLS] q [SEP] d [SEP]`` with token types 0/1 for
BERT) and, when the pair is over ``L`` tokens, tokens removed one at a time from whichever of
the two texts is longer at that moment (the ``longest_first`` strategy, the default of both
Hugging Face and the ``tokenizers`` library). ``L`` and the strategy are in the manifest
(``max_seq_length``, ``rerank.truncation``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

from .backends import Session
from .embedder import _check_positive, _encode_within_limit, _open_artefact
from .errors import ArtefactError, EmbedrtError
from .manifest import JSONValue, Manifest

logger = logging.getLogger(__name__)

TASK_RERANK = "rerank"
ACTIVATIONS = ("sigmoid", "identity", "tanh")
TRUNCATION = "longest_first"
DEFAULT_BATCH_SIZE = 32
FloatArray = npt.NDArray[np.float32]


class RerankInputError(EmbedrtError, ValueError):
    """The inputs to score are not usable (wrong type, or a model with several labels in rank)."""


@dataclass(frozen=True)
class RerankSpec:
    """How a cross-encoder artefact turns its graph's logits into scores (``manifest.rerank``).

    Attributes:
        num_labels: logits per pair; 1 for a relevance model.
        activation: applied to the logits as sentence-transformers' ``CrossEncoder`` does by
            default: one of :data:`ACTIVATIONS`.
        truncation: the pair truncation strategy (``longest_first``).
        parity: figures measured at export against ``CrossEncoder.predict`` on torch.
    """

    num_labels: int
    activation: str
    truncation: str
    parity: Mapping[str, JSONValue]

    @classmethod
    def from_manifest(cls, manifest: Manifest, origin: str) -> RerankSpec:
        """Validate the manifest's ``task`` and ``rerank`` record.

        Raises:
            ArtefactError: not a reranker artefact, or a field is missing or wrong.
        """
        if manifest.task != TASK_RERANK or manifest.rerank is None:
            raise ArtefactError(
                f"{origin}: a {manifest.task!r} artefact, not a reranker; export a cross-encoder "
                "with 'embedrt export SOURCE --reranker', or load this one with Embedder"
            )
        record = manifest.rerank
        labels, activation, truncation = (
            record.get("num_labels"),
            record.get("activation"),
            record.get("truncation"),
        )
        if not isinstance(labels, int) or isinstance(labels, bool) or labels < 1:
            raise ArtefactError(f"{origin}: rerank.num_labels must be a positive integer, got {labels!r}")
        if activation not in ACTIVATIONS:
            raise ArtefactError(f"{origin}: rerank.activation {activation!r} is not one of {ACTIVATIONS}")
        if truncation != TRUNCATION:
            raise ArtefactError(f"{origin}: rerank.truncation {truncation!r} is not {TRUNCATION!r}")
        parity = record.get("parity")
        return cls(labels, str(activation), truncation, parity if isinstance(parity, dict) else {})


@dataclass(frozen=True)
class RankedDocument:
    """One entry of :meth:`Reranker.rank`: the document's position in the input, its score, its text."""

    index: int
    score: float
    text: str | None = None


class Reranker:
    """Scores (query, document) pairs with a cross-encoder artefact. Build with :meth:`load`.

    Safe to call from several threads.
    """

    def __init__(
        self,
        manifest: Manifest,
        spec: RerankSpec,
        session: Session,
        tokenizer: Tokenizer,
        untruncated: Tokenizer,
        threads: int,
        batch_size: int,
    ) -> None:
        self.manifest = manifest
        self.spec = spec
        self.threads = threads
        self.batch_size = batch_size
        self._session = session
        self._tokenizer = tokenizer
        self._untruncated = untruncated

    @classmethod
    def load(
        cls,
        path: str | Path,
        threads: int | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        verify: bool = True,
        spin: bool = True,
    ) -> Reranker:
        """Load a cross-encoder artefact directory (``manifest.json`` with ``task: rerank``).

        Args:
            path: the artefact directory.
            threads: the engine's threads; default: the CPUs this process may use.
            batch_size: pairs per inference call (length-sorted, so padding stays small).
            verify: check the files' sha256 against the manifest.
            spin: onnxruntime's worker spinning (see ``Embedder.load``).

        Raises:
            ArtefactNotFoundError: the directory or one of its files is missing.
            ArtefactError: not a reranker artefact, or a file does not match the manifest.
            ValueError: ``threads`` or ``batch_size`` is not positive.
        """
        directory = Path(path)
        manifest = Manifest.load(directory)
        spec = RerankSpec.from_manifest(manifest, str(directory))
        _check_positive(threads=threads, batch_size=batch_size)
        opened = _open_artefact(directory, manifest, threads, verify=verify, spin=spin)
        outputs = opened.session.output_names
        # OpenVINO reports one of a fused output's several names: one output is the graph's.
        if manifest.output not in outputs and len(outputs) != 1:
            raise ArtefactError(f"{opened.model_path}: graph has no output {manifest.output!r}")
        return cls(
            manifest, spec, opened.session, opened.tokenizer, opened.untruncated, opened.threads, batch_size
        )

    @property
    def max_seq_length(self) -> int:
        """Token limit of a pair (special tokens included)."""
        return self.manifest.max_seq_length

    @property
    def engine(self) -> str:
        """What runs the graph (``onnxruntime``, or ``openvino bf16``)."""
        return self._session.engine

    def tokenize(self, pairs: Sequence[tuple[str, str]], truncate: bool = True) -> list[Encoding]:
        """Tokenise ``pairs`` as the model's tokenizer does (pair template, ``longest_first``).

        Raises:
            RerankInputError: ``pairs`` is not a list of two-string pairs.
            InputTooLongError: ``truncate`` is False and a pair exceeds ``max_seq_length``.
        """
        checked = _checked_pairs(pairs)
        if not checked:
            return []
        if truncate:
            encoded: list[Encoding] = self._tokenizer.encode_batch(checked)
            return encoded
        return _encode_within_limit(self._untruncated, checked, self.max_seq_length, lambda i: f"pair {i}")

    def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        batch_size: int | None = None,
        truncate: bool = True,
        activation: bool = True,
    ) -> FloatArray:
        """Score ``pairs``: ``(n,)`` float32 for a one-label model, else ``(n, num_labels)``.

        As ``CrossEncoder.predict``: the model's activation applied to the logits (sigmoid
        for a one-label sentence-transformers model unless it states another); ``activation``
        False returns the raw logits.

        Raises:
            RerankInputError: ``pairs`` is not a list of (str, str).
            InputTooLongError: ``truncate`` is False and a pair exceeds ``max_seq_length``.
            ValueError: ``batch_size`` is not positive.
        """
        size = batch_size or self.batch_size
        _check_positive(batch_size=size)
        return self.score_encodings(self.tokenize(pairs, truncate), batch_size=size, activation=activation)

    def score_encodings(
        self, encodings: Sequence[Encoding], *, batch_size: int | None = None, activation: bool = True
    ) -> FloatArray:
        """Scores of :meth:`tokenize` output, as :meth:`predict` returns them (input order).

        Batches of ``batch_size`` are formed from length-sorted pairs, so padding stays small.
        """
        size = batch_size or self.batch_size
        logits = np.empty((len(encodings), self.spec.num_labels), dtype=np.float32)
        lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            logits[rows] = self.logits_of([encodings[i] for i in rows])
        scores = _activate(logits, self.spec.activation) if activation else logits
        return scores[:, 0].copy() if self.spec.num_labels == 1 else scores

    def logits_of(self, encodings: Sequence[Encoding]) -> FloatArray:
        """Run one batch of :meth:`tokenize` output (padded here); ``(n, num_labels)`` logits."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.manifest.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
            types[row, :n] = encoding.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        wanted = {name: feeds[name] for name in self.manifest.inputs}
        out: FloatArray = np.asarray(self._session.run([self.manifest.output], wanted)[0], np.float32)
        return out.reshape(len(encodings), self.spec.num_labels)

    def activate(self, logits: FloatArray) -> FloatArray:
        """The model's activation applied to ``(n, num_labels)`` logits; ``(n,)`` for one label."""
        scores = _activate(logits, self.spec.activation)
        return scores[:, 0].copy() if self.spec.num_labels == 1 else scores

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        *,
        batch_size: int | None = None,
        truncate: bool = True,
        activation: bool = True,
    ) -> list[RankedDocument]:
        """Score ``documents`` against ``query``; best first, ordered as ``CrossEncoder.rank`` orders.

        Ties keep input order (a stable sort on descending score, as Python's
        ``sorted(..., reverse=True)`` in sentence-transformers). ``top_k`` keeps the first
        ``top_k`` (None: all).

        Raises:
            RerankInputError: ``query`` is not a string, ``documents`` not a list of strings, or
                the model has more than one label.
            ValueError: ``top_k`` is negative.
        """
        if self.spec.num_labels != 1:
            raise RerankInputError(
                f"rank needs a one-label model; this one has {self.spec.num_labels} labels. "
                "Use predict with pairs instead."
            )
        if not isinstance(query, str):
            raise RerankInputError(f"query must be a string, got {type(query).__name__}")
        _check_documents(documents)
        if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"top_k must be a non-negative integer or None, got {top_k!r}")
        scores = self.predict(
            [(query, d) for d in documents], batch_size=batch_size, truncate=truncate, activation=activation
        )
        return ranked(scores, documents if return_documents else None, top_k)


def ranked(
    scores: FloatArray, documents: Sequence[str] | None = None, top_k: int | None = None
) -> list[RankedDocument]:
    """``scores`` as :class:`RankedDocument` entries, highest first, ties in input order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:top_k]
    return [
        RankedDocument(int(i), float(scores[i]), None if documents is None else documents[i]) for i in order
    ]


def _activate(logits: FloatArray, activation: str) -> FloatArray:
    if activation == "sigmoid":
        # 1 / (1 + exp(-x)) overflows for very negative x; this form does not.
        out = np.empty_like(logits)
        positive = logits >= 0
        out[positive] = 1.0 / (1.0 + np.exp(-logits[positive]))
        e = np.exp(logits[~positive])
        out[~positive] = e / (1.0 + e)
        return out
    if activation == "tanh":
        return np.tanh(logits)
    return logits


def _check_documents(documents: Any) -> None:
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise RerankInputError(
            f"documents must be a list of strings, got {type(documents).__name__}; wrap one in a list"
        )
    for position, document in enumerate(documents):
        if not isinstance(document, str):
            raise RerankInputError(f"document {position} is {type(document).__name__}, not str")


def _checked_pairs(pairs: Any) -> list[tuple[str, str]]:
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise RerankInputError(f"pairs must be a list of (str, str), got {type(pairs).__name__}")
    checked = []
    for position, pair in enumerate(pairs):
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or not all(isinstance(text, str) for text in pair)
        ):
            raise RerankInputError(f"pair {position} is not two strings: {pair!r:.80}")
        checked.append((pair[0], pair[1]))
    return checked
