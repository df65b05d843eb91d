"""Accuracy-aware quantisation: keep the most sensitive nodes in float until a target holds.

The search measures on the sentences it is given: export passes the calibration sentences,
the inputs of the kinds the parity gate checks (:func:`.calibration.check_sentences`) and
the gate's own validation sentences, never evaluation data. A target the search reaches is
then a target the gate sees reached: same sentences, same torch reference, same artefact.
For each quantisable node, sensitivity is how much the minimum per-sentence cosine to the
torch reference improves when that node alone stays float.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from embedrt.export.errors import AccuracyTargetError
from embedrt.export.stages import companion_files
from embedrt.runtime.manifest import MODEL_FILE, QuantisationRecord
from embedrt.runtime.pooling import row_cosines

logger = logging.getLogger(__name__)

Quantize = Callable[[Path, Path, Sequence[str]], QuantisationRecord]


@dataclass(frozen=True)
class SearchResult:
    """What the search settled on: the nodes kept in float and the cosine it reached."""

    excluded: tuple[str, ...]
    min_cosine: float
    record: QuantisationRecord
    trials: int


def search(
    staging: Path,
    candidates: Sequence[str],
    quantize: Quantize,
    sentences: Sequence[str],
    reference: npt.NDArray[np.float32],
    target: float,
    on_trial: Callable[[str], None] = lambda message: None,
) -> SearchResult:
    """Quantise ``staging/model.onnx`` in place, leaving as few nodes float as the target allows.

    Args:
        staging: an artefact directory holding the fp32 ``model.onnx``, tokenizer and manifest.
        candidates: the MatMul names the search may keep float (``search_candidates``).
        quantize: ``quantize(fp32_model, out_model, exclude_nodes) -> record``.
        sentences: what the search measures on.
        reference: torch embeddings of ``sentences``.
        target: minimum per-sentence cosine to reach on ``sentences``.
        on_trial: called with a one-line report after each trial.

    Raises:
        AccuracyTargetError: even with every candidate left in float the target is missed.
    """
    with tempfile.TemporaryDirectory(prefix="embedrt-accuracy-") as scratch:
        fp32 = Path(scratch) / "fp32.onnx"
        shutil.copyfile(staging / MODEL_FILE, fp32)
        trial = _Trial(staging, fp32, Path(scratch), quantize, list(sentences), reference)
        score, record = trial.run(())
        total = record.quantised_matmuls + len(record.fp32_matmuls)
        on_trial(f"all {total} MatMuls quantised: min cosine {score:.5f} (target {target})")
        excluded: list[str] = []
        if score < target:
            ranked = _rank_by_sensitivity(trial, candidates, score, on_trial)
            for node in ranked:
                if node in record.fp32_matmuls:
                    continue  # already float with an earlier one (Q, K and V go together)
                excluded.append(node)
                score, record = trial.run(excluded)
                kept = len(record.fp32_matmuls)
                on_trial(f"{kept} of {total} MatMuls kept float: min cosine {score:.5f}")
                if score >= target:
                    break
        if score < target:
            raise AccuracyTargetError(
                f"no recipe reaches min cosine {target} on the check sentences: the best, "
                f"with {len(record.fp32_matmuls)} of {total} quantisable MatMuls "
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
        reference: npt.NDArray[np.float32],
    ) -> None:
        self.fp32, self.quantize = fp32, quantize
        self.sentences, self.reference = sentences, reference
        self.dir = scratch / "trial"
        self.dir.mkdir()
        for name in companion_files(staging):  # tokenizer, manifest, Dense weights
            shutil.copyfile(staging / name, self.dir / name)
        self.out = self.dir / MODEL_FILE
        self.count = 0

    def run(self, excluded: Sequence[str]) -> tuple[float, QuantisationRecord]:
        """Quantise with ``excluded`` kept float; return (min cosine to the reference, record)."""
        from embedrt.runtime.embedder import Embedder

        self.count += 1
        record = self.quantize(self.fp32, self.out, tuple(excluded))
        vectors = Embedder.load(self.dir, verify=False).embed(self.sentences)
        return float(row_cosines(self.reference, vectors).min()), record
