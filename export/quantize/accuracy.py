"""Quantisation decided by measured accuracy: scales and nodes kept float, from trials.

Two decisions are taken by quantising, embedding and comparing (one :class:`_Trial` each time):

- :func:`choose_scales`: ``auto`` activation scales become ``static`` when the static graph
  stays close enough to the fp32 graph, else ``per-token``;
- :func:`search`: accuracy-aware quantisation keeps the most sensitive nodes in float until a
  target holds.

Neither imports the graph rewriting: the caller passes the function that quantises.

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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from embedrt.export.errors import AccuracyTargetError
from embedrt.export.quantize.recipe import SCALES_AUTO, SCALES_PER_TOKEN, SCALES_STATIC, Recipe, with_scales
from embedrt.export.stages import companion_files
from embedrt.runtime.manifest import MODEL_FILE, QuantisationRecord
from embedrt.runtime.pooling import row_cosines

logger = logging.getLogger(__name__)

Quantize = Callable[[Path, Path, Sequence[str]], QuantisationRecord]
"""``quantize(fp32_model, out_model, exclude_nodes) -> record``, with the recipe fixed."""
QuantizeWith = Callable[[Path, Path, Recipe], QuantisationRecord]
"""``quantize(fp32_model, out_model, recipe) -> record``: a recipe to try, nothing excluded."""


def choose_scales(
    fp32_model: Path, recipe: Recipe, texts: Sequence[str], quantize: QuantizeWith
) -> Recipe:
    """``recipe`` with ``activation_scales`` resolved: ``static`` when it is good enough, else ``per-token``.

    With ``auto``, the static graph (``quantize`` with static scales and the embedding table
    left fp32, so only the scales are judged) embeds ``texts`` (the calibration sentences and
    the kinds of input the parity gate checks) next to the fp32 graph; static scales are kept
    when the lowest per-text cosine reaches ``recipe.static_check_min_cosine``. The cosine
    measured is recorded in the recipe. Needs the tokenizer and manifest beside
    ``fp32_model``. Any other setting is returned as it is.

    Raises:
        PatternMismatchError: a block does not match its pattern (from ``quantize``).
    """
    if recipe.activation_scales != SCALES_AUTO:
        return recipe
    # The table stays fp32 in the check: it judges the activation scales alone, the same for
    # int8 and int8-edge.
    static = replace(with_scales(recipe, SCALES_STATIC), embedding_bits=None)
    with tempfile.TemporaryDirectory(prefix="embedrt-scales-") as scratch:
        reference_dir = _artefact_dir(fp32_model.parent, Path(scratch) / "fp32")
        (reference_dir / MODEL_FILE).symlink_to(fp32_model.resolve())
        reference = _embed(reference_dir, list(texts))

        def quantize_static(fp32: Path, out: Path, exclude: Sequence[str]) -> QuantisationRecord:
            return quantize(fp32, out, static)

        trial = _Trial(fp32_model.parent, fp32_model, Path(scratch), quantize_static, list(texts), reference)
        reached = trial.run(())[0]
    chosen = SCALES_STATIC if reached >= recipe.static_check_min_cosine else SCALES_PER_TOKEN
    logger.info("static activation scales reach min cosine %.5f to fp32: %s scales", reached, chosen)
    return replace(with_scales(recipe, chosen), static_check_result=round(reached, 6))


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
        self.dir = _artefact_dir(staging, scratch / "trial")
        self.out = self.dir / MODEL_FILE
        self.count = 0

    def run(self, excluded: Sequence[str]) -> tuple[float, QuantisationRecord]:
        """Quantise with ``excluded`` kept float; return (min cosine to the reference, record)."""
        self.count += 1
        record = self.quantize(self.fp32, self.out, tuple(excluded))
        vectors = _embed(self.dir, self.sentences)
        return float(row_cosines(self.reference, vectors).min()), record


def _artefact_dir(staging: Path, directory: Path) -> Path:
    """``directory`` made, holding ``staging``'s tokenizer, manifest and Dense weights (no graph)."""
    directory.mkdir()
    for name in companion_files(staging):
        shutil.copyfile(staging / name, directory / name)
    return directory


def _embed(directory: Path, texts: list[str]) -> npt.NDArray[np.float32]:
    from embedrt.runtime.embedder import Embedder

    return Embedder.load(directory, verify=False).embed(texts)
