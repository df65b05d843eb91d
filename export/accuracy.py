"""Accuracy-aware quantisation: keep the most sensitive nodes in float until a target holds.

Sensitivity is measured on calibration sentences (``calibration_sentences.json``), never on
evaluation data: for each quantisable node, how much the minimum per-sentence cosine to the
torch reference improves when that node alone stays float.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from embedrt.runtime.embedder import Embedder
from embedrt.runtime.errors import EmbedrtError
from embedrt.runtime.manifest import MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE

logger = logging.getLogger(__name__)

Quantize = Callable[[Path, Path, Sequence[str]], dict[str, Any]]


class AccuracyTargetError(EmbedrtError, ValueError):
    """No recipe reached the requested minimum cosine, even with every node left in float."""


@dataclass(frozen=True)
class SearchResult:
    """What the search settled on: the nodes kept in float and the cosine it reached."""

    excluded: tuple[str, ...]
    min_cosine: float
    record: dict[str, Any]
    trials: int


def calibration_sentences() -> list[str]:
    """Sentences used to measure sensitivity (written for embedrt, not an evaluation set)."""
    text = resources.files("embedrt.export").joinpath("calibration_sentences.json").read_text()
    sentences: list[str] = json.loads(text)["sentences"]
    return sentences


def search(
    staging: Path,
    candidates: Sequence[str],
    quantize: Quantize,
    reference: npt.NDArray[Any],
    target: float,
    on_trial: Callable[[str], None] = lambda message: None,
) -> SearchResult:
    """Quantise ``staging/model.onnx`` in place, leaving as few nodes float as the target allows.

    Args:
        staging: an artefact directory holding the fp32 ``model.onnx``, tokenizer and manifest.
        candidates: the MatMul names the search may keep float (``search_candidates``).
        quantize: ``quantize(fp32_model, out_model, exclude_nodes) -> record``.
        reference: torch embeddings of :func:`calibration_sentences`.
        target: minimum per-sentence cosine to reach on the calibration sentences.

    Raises:
        AccuracyTargetError: even with every candidate left in float the target is missed.
    """
    sentences = calibration_sentences()
    with tempfile.TemporaryDirectory(prefix="embedrt-accuracy-") as scratch:
        fp32 = Path(scratch) / "fp32.onnx"
        shutil.copyfile(staging / MODEL_FILE, fp32)
        trial = _Trial(staging, fp32, Path(scratch), quantize, sentences, reference)
        score, record = trial.run(())
        total = int(record.get("quantised_matmuls", len(candidates))) + len(record.get("fp32_matmuls", ()))
        on_trial(f"all {total} MatMuls quantised: min cosine {score:.5f} (target {target})")
        excluded: list[str] = []
        if score < target:
            ranked = _rank_by_sensitivity(trial, candidates, score, on_trial)
            for node in ranked:
                if node in record.get("fp32_matmuls", ()):
                    continue  # already float with an earlier one (Q, K and V go together)
                excluded.append(node)
                score, record = trial.run(excluded)
                kept = len(record.get("fp32_matmuls", excluded))
                on_trial(f"{kept} of {total} MatMuls kept float: min cosine {score:.5f}")
                if score >= target:
                    break
        if score < target:
            raise AccuracyTargetError(
                f"no recipe reaches min cosine {target} on the calibration sentences: the best, "
                f"with {len(record.get('fp32_matmuls', excluded))} of {total} quantisable MatMuls "
                f"left in float, reached {score:.5f}. Lower --min-cosine or choose a float variant."
            )
        shutil.copyfile(trial.out, staging / MODEL_FILE)
    return SearchResult(tuple(excluded), score, record, trial.count)


def _rank_by_sensitivity(
    trial: _Trial, candidates: Sequence[str], baseline: float, on_trial: Callable[[str], None]
) -> list[str]:
    gains = {}
    for position, node in enumerate(candidates, 1):
        gains[node] = trial.run([node])[0] - baseline
        on_trial(f"sensitivity {position}/{len(candidates)}: {node} {gains[node]:+.5f}")
    return sorted(candidates, key=lambda node: gains[node], reverse=True)


class _Trial:
    """Quantise with some nodes excluded and score the result against the reference."""

    def __init__(
        self,
        staging: Path,
        fp32: Path,
        scratch: Path,
        quantize: Quantize,
        sentences: list[str],
        reference: npt.NDArray[Any],
    ) -> None:
        self.fp32, self.quantize = fp32, quantize
        self.sentences, self.reference = sentences, reference
        self.dir = scratch / "trial"
        self.dir.mkdir()
        for name in (TOKENIZER_FILE, MANIFEST_FILE):
            shutil.copyfile(staging / name, self.dir / name)
        self.out = self.dir / MODEL_FILE
        self.count = 0

    def run(self, excluded: Sequence[str]) -> tuple[float, dict[str, Any]]:
        self.count += 1
        record = self.quantize(self.fp32, self.out, tuple(excluded))
        vectors = Embedder.load(self.dir, verify=False).embed(self.sentences)
        ref = self.reference / np.linalg.norm(self.reference, axis=1, keepdims=True)
        ours = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return float((ref * ours).sum(axis=1).min()), record
