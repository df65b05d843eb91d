"""A quantised variant for export: the recipe for the target CPU, optionally an accuracy search."""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from embedrt.export.errors import PatternMismatchError
from embedrt.export.quantize.accuracy import search
from embedrt.export.quantize.calibration import calibration_feeds, calibration_sentences, check_sentences
from embedrt.export.quantize.graph import Feed
from embedrt.export.quantize.pipeline import quantize, resolve_scales, search_candidates
from embedrt.export.quantize.recipe import Recipe, cpu_features, recipe_for, required_cpu_flags
from embedrt.runtime.manifest import (
    MODEL_FILE,
    TOKENIZER_FILE,
    AccuracySearchRecord,
    ArtefactRecipe,
    JSONValue,
    Manifest,
    QuantisationRecord,
)

if TYPE_CHECKING:
    from embedrt.export.options import ExportOptions

METHOD = "embedrt quantisation (embedrt.export.quantize)"


def quantise_variant(
    variant: str,
    staging: Path,
    source: Path,
    options: ExportOptions,
    step: Callable[[str], None],
) -> ArtefactRecipe:
    """Quantise ``staging/model.onnx`` in place into ``variant``; return the manifest recipe.

    ``staging`` holds the exported fp32 graph, its tokenizer and manifest; ``source`` is the
    sentence-transformers folder (the torch reference of an accuracy search).

    Raises:
        UnknownISAError: ``options.isa`` is not a known target.
        AccuracyTargetError: ``options.min_cosine`` cannot be reached.
        UnsupportedModelError: the graph cannot be quantised with the recipe.
    """
    from embedrt.export.parity import reference_embeddings, validation_sentences

    recipe = recipe_for(variant, options.isa)
    fp32 = staging / "fp32.onnx"
    (staging / MODEL_FILE).rename(fp32)
    sentences = calibration_sentences()
    feeds = calibration_feeds(staging / TOKENIZER_FILE, sentences, Manifest.load(staging).max_seq_length)
    try:
        recipe = _resolved(fp32, recipe, feeds)
        if recipe.static_check_result is not None:
            step(
                f"{recipe.activation_scales} activation scales (static ones reach min cosine "
                f"{recipe.static_check_result:.4f} to fp32; kept at >= {recipe.static_check_min_cosine})"
            )

        def quantize_excluding(
            fp32_model: Path, out_model: Path, exclude: Sequence[str]
        ) -> QuantisationRecord:
            return quantize(fp32_model, out_model, recipe, exclude, calibration=feeds)

        if options.min_cosine is None:
            step(f"quantising ({recipe.name} for {recipe.target_isa})")
            record = quantize_excluding(fp32, staging / MODEL_FILE, ())
        else:
            step(f"accuracy-aware quantisation to min cosine {options.min_cosine}")
            shutil.copyfile(fp32, staging / MODEL_FILE)  # search starts from the fp32 graph
            # The gate's own sentences too: what the search reaches, the gate sees.
            measured = list(dict.fromkeys([*check_sentences(), *validation_sentences()]))
            reference = reference_embeddings(source, measured)
            result = search(
                staging,
                search_candidates(fp32, recipe, feeds),
                quantize_excluding,
                measured,
                reference,
                options.min_cosine,
                on_trial=step,
            )
            searched = AccuracySearchRecord(options.min_cosine, result.min_cosine, result.trials)
            record = replace(result.record, accuracy_search=searched)
        if record.settings.get("fallback_reason"):  # say it where the user sees progress
            step(f"per-token layout: no block pattern matched ({record.settings['fallback_reason']})")
    finally:
        fp32.unlink()
    features: dict[str, JSONValue] = dict(cpu_features())
    built_on: dict[str, JSONValue] = {"machine": platform.machine(), "cpu_features": features}
    return ArtefactRecipe(
        method=METHOD,
        requires_cpu_flags=required_cpu_flags(recipe.target_isa),
        quantisation=replace(record, calibration_sentences=len(sentences), built_on=built_on),
    )


def _resolved(fp32: Path, recipe: Recipe, feeds: Sequence[Feed]) -> Recipe:
    """``recipe`` with its activation scales chosen once (not at every trial of a search)."""
    try:
        return resolve_scales(fp32, recipe, feeds)
    except PatternMismatchError:
        return recipe  # quantize falls back to the per-token layout and records why
