"""Quantised variants: choose the recipe for the CPU, optionally search for an accuracy target."""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrt.export import _quantize
from embedrt.export.accuracy import calibration_sentences, search
from embedrt.export.parity import reference_embeddings
from embedrt.runtime.manifest import MODEL_FILE, TOKENIZER_FILE, Manifest

if TYPE_CHECKING:
    from embedrt.export.exporter import ExportOptions

# The CPU flags each target needs; the runtime warns at load when they are missing.
REQUIRED_CPU_FLAGS = {
    "avx512_vnni": ["avx512f", "avx512bw", "avx512_vnni"],
    "avx_vnni": ["avx2", "avx_vnni"],
    "avx512": ["avx512f", "avx512bw"],
    "avx2": ["avx2"],
    "arm64": [],
}


def quantise_variant(
    variant: str,
    staging: Path,
    source: Path,
    options: ExportOptions,
    step: Callable[[str], None],
) -> dict[str, Any]:
    """Quantise ``staging/model.onnx`` in place into ``variant``; return the manifest recipe.

    Raises:
        UnknownISAError: ``options.isa`` is not a known target.
        AccuracyTargetError: ``options.min_cosine`` cannot be reached.
    """
    detected = _quantize.detect_isa()
    recipe = _quantize.recipe_for(variant, options.isa)
    fp32 = staging / "fp32.onnx"
    (staging / MODEL_FILE).rename(fp32)
    sentences = calibration_sentences()
    max_len = Manifest.load(staging).max_seq_length
    feeds = _quantize.calibration_feeds(staging / TOKENIZER_FILE, sentences, max_len)

    def quantize(fp32_model: Path, out_model: Path, exclude: Sequence[str]) -> dict[str, Any]:
        return _quantize.quantize(fp32_model, out_model, recipe, exclude, calibration=feeds)

    try:
        if options.min_cosine is None:
            step(f"quantising ({recipe.name} for {recipe.target_isa})")
            record = quantize(fp32, staging / MODEL_FILE, ())
            searched: dict[str, Any] = {}
        else:
            step(f"accuracy-aware quantisation to min cosine {options.min_cosine}")
            shutil.copyfile(fp32, staging / MODEL_FILE)  # search starts from the fp32 graph
            reference = reference_embeddings(source, sentences)
            result = search(
                staging, _quantize.search_candidates(fp32, recipe), quantize, reference,
                options.min_cosine, on_trial=step,
            )
            record = result.record
            searched = {
                "min_cosine_target": options.min_cosine,
                "calibration_min_cosine": result.min_cosine,
                "trials": result.trials,
            }
    finally:
        fp32.unlink()
    return {
        "method": "embedrt quantisation (export/_quantize.py)",
        **record,
        **({"accuracy_search": searched} if searched else {}),
        "requires_cpu_flags": REQUIRED_CPU_FLAGS[recipe.target_isa],
        "built_on": {"machine": platform.machine(), "cpu_features": detected},
        "calibration_sentences": len(sentences),
    }
