"""Measure every int8 recipe tried for all-MiniLM-L6-v2 in one run.

    python -m embedrt.bench.studies.int8_recipes --out DIR [--fp32 <fp32 artefact directory>] [--quick]

Per recipe: cosine to sentence-transformers torch fp32 on the STS-B dev sentences (min/mean),
STS-B dev Spearman x100, batch invariance (a sentence alone vs inside mixed-length batches of
8/32/128: min cosine), throughput at batch 32 on short/medium/long texts as a ratio to the fp32
graph measured in the same run (median of repeats, recipes interleaved), batch-1 latency and
file size. Recipes are built with ``embedrt.export.quantize`` from the fp32 artefact's graph;
each becomes an artefact directory embedded through ``embedrt.runtime.Embedder``; the
measurements are ``embedrt.bench``'s. ``--quick`` runs on a few sentences (a smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from embedrt.bench.context import run_context
from embedrt.bench.quality import batch_invariance, cosine_stats, spearman
from embedrt.bench.speed import latency, throughput
from embedrt.bench.systems import EmbedrtSystem, System, SystemSpec
from embedrt.bench.workloads import SHIPPED_STS, build_workload, read_sts, token_counts
from embedrt.export import quantize
from embedrt.runtime.home import artefact_dir
from embedrt.runtime.manifest import (
    MODEL_FILE,
    TOKENIZER_FILE,
    ArtefactRecipe,
    Manifest,
    QuantisationRecord,
    sha256_file,
)
from embedrt.runtime.pooling import row_cosines

logger = logging.getLogger("int8_recipes")
THREADS = 2
BATCH_SIZE = 32
ISA = "avx512_vnni"  # the recipes are compared as built for VNNI CPUs (plus one non-VNNI form)


def recipes() -> dict[str, quantize.Recipe]:
    """Every recipe tried, by the name the report uses."""
    int8 = quantize.recipe_for("int8", ISA)
    return {
        "int8 (recommended: fused-bert, QAttention)": int8,
        "int8, per-token layout (the previous default)": quantize.recipe_for("int8", ISA, layout="per-token"),
        "int8, non-VNNI form (u8u8)": quantize.recipe_for("int8", "avx2"),
        "int8, reduce_range 7-bit weights": dataclasses.replace(int8, weight_bits=7, name="int8-rr"),
        "int8, static ranges not widened (margin 1.0)": dataclasses.replace(int8, static_range_margin=1.0),
        "int8, no smoothing, fp32 embeddings": dataclasses.replace(
            int8, smoothing_alpha=None, context_smoothing_alpha=None, embedding_bits=None
        ),
        "int8, fp32 embeddings": dataclasses.replace(int8, embedding_bits=None),
        "int8-edge (4-bit embeddings)": quantize.recipe_for("int8-edge", ISA),
        "MatMulNBits 8-bit b32 acc4, fp32 emb": dataclasses.replace(
            quantize.recipe_for("int4-edge", ISA),
            name="nbits8",
            weight_bits=8,
            weight_symmetric=True,
            embedding_bits=None,
        ),
        "int4-edge (MatMulNBits 4-bit b32 acc4)": quantize.recipe_for("int4-edge", ISA),
    }


def build_artefacts(fp32: Path, out: Path) -> dict[str, Path]:
    """The fp32 artefact plus one artefact directory per recipe, by report name.

    Raises:
        FileNotFoundError: ``fp32`` holds no exported graph.
    """
    manifest = Manifest.load(fp32)
    # The export's calibration: its own sentences (not STS-B), at the model's length limit.
    feeds = quantize.calibration_feeds(fp32 / TOKENIZER_FILE, max_seq_length=manifest.max_seq_length)
    artefacts = {"fp32": fp32}
    for index, (name, recipe) in enumerate(recipes().items()):
        target = out / "models" / f"r{index}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        record = quantize.quantize(fp32 / MODEL_FILE, target / MODEL_FILE, recipe, calibration=feeds)
        _write_artefact(manifest, fp32, target, recipe.name, record)
        artefacts[name] = target
    return artefacts


def _write_artefact(
    manifest: Manifest, fp32: Path, target: Path, variant: str, record: QuantisationRecord
) -> None:
    shutil.copyfile(fp32 / TOKENIZER_FILE, target / TOKENIZER_FILE)
    recipe = ArtefactRecipe(
        method="embedrt.bench.studies.int8_recipes", requires_cpu_flags=(), quantisation=record
    )  # no CPU-flag warning: the non-VNNI forms are measured here on purpose
    files = {name: sha256_file(target / name) for name in (MODEL_FILE, TOKENIZER_FILE)}
    dataclasses.replace(manifest, variant=variant, recipe=recipe, files=files, parity=None).save(target)


def fidelity(
    system: System, sentences: Sequence[str], reference: npt.NDArray[np.float32], gold: Sequence[float]
) -> dict[str, Any]:
    """Cosine to the torch reference (min/mean) and STS Spearman x100 (pairs are consecutive)."""
    vectors = system.embed(sentences, BATCH_SIZE)
    stats = cosine_stats(row_cosines(vectors, reference))
    return {
        "cos_min": stats["min"],
        "cos_mean": stats["mean"],
        "spearman_x100": 100 * spearman(row_cosines(vectors[0::2], vectors[1::2]), gold),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build the recipes and measure them; returns the results by recipe name."""
    from embedrt.export.parity import reference_embeddings

    pairs, gold = read_sts(args.sts)
    if args.quick:
        pairs, gold = pairs[:24], gold[:24]
    sentences = [text for pair in pairs for text in pair]
    fp32_manifest = Manifest.load(args.fp32)
    reference = reference_embeddings(Path(fp32_manifest.source.path), sentences)
    artefacts = build_artefacts(args.fp32, args.out)
    sizes = {"short": 16, "medium": 8, "long": 4} if args.quick else {"short": 512, "medium": 128, "long": 32}
    workload = build_workload(args.fp32 / TOKENIZER_FILE, sizes, args.sts, None)
    probes = sentences[:: max(1, len(sentences) // 64)][:64]
    fillers = [*sentences, *workload.buckets["long"]]  # mixed lengths, incl. ~250-token texts
    results: dict[str, Any] = {}
    for name, path in artefacts.items():
        # One at a time: batch-128 runs with 256-token fillers grow each arena to ~1 GB.
        system = EmbedrtSystem(SystemSpec(name, "embedrt", str(path), THREADS))
        invariance = batch_invariance(system, probes, fillers, (8, 32) if args.quick else (8, 32, 128))
        results[name] = {
            "size_mb": (path / MODEL_FILE).stat().st_size / 1e6,
            **fidelity(system, sentences, reference, gold),
            **{f"invariance_b{size}": stats["min"] for size, stats in invariance.items()},
            "record": system.metadata["recipe"],
        }
        logger.warning("%s: %s", name, {k: v for k, v in results[name].items() if k != "record"})
    systems = [
        EmbedrtSystem(SystemSpec(name, "embedrt", str(path), THREADS)) for name, path in artefacts.items()
    ]
    for bucket, texts in workload.buckets.items():
        tokens = int(token_counts(args.fp32 / TOKENIZER_FILE, texts).sum())
        speed = throughput(systems, texts, tokens, BATCH_SIZE, args.repeats, lambda: None)
        for name in artefacts:
            results[name].setdefault("speed", {})[bucket] = speed[name]["texts_per_s"]
    single = latency(systems, workload.buckets["short"][:100], 5, args.repeats, lambda: None)
    for name in artefacts:
        results[name]["speed"]["latency_ms"] = single[name]["p50_ms"]
        results[name]["speedup"] = {
            bucket: results[name]["speed"][bucket] / results["fp32"]["speed"][bucket]
            for bucket in workload.buckets
        }
    return results


def write_markdown(path: Path, results: dict[str, Any], env: dict[str, Any]) -> None:
    """The results as a Markdown table."""
    cols = ["MB", "cos min", "cos mean", "Spearman", *(f"inv b{b}" for b in (8, 32, 128)),
            "short", "medium", "long", "b1 ms"]
    lines = [
        f"# int8 recipes, all-MiniLM-L6-v2 ({env['cpu']['model']}, {THREADS} threads, "
        f"onnxruntime {env['versions'].get('onnxruntime')})",
        "",
        "Speed: throughput at batch 32 as a ratio to fp32 ONNX in the same run; b1 ms: batch-1 latency.",
        "",
        "| recipe | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for name, r in results.items():
        invariance = [r.get(f"invariance_b{b}") for b in ("8", "32", "128")]
        vals = [
            f"{r['size_mb']:.1f}",
            f"{r['cos_min']:.4f}",
            f"{r['cos_mean']:.5f}",
            f"{r['spearman_x100']:.2f}",
            *("-" if v is None else f"{v:.6f}" for v in invariance),
            *(f"{r['speedup'][k]:.2f}x" for k in ("short", "medium", "long")),
            f"{r['speed']['latency_ms']:.2f}",
        ]
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    """Run from the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fp32", type=Path, default=artefact_dir("all-MiniLM-L6-v2", "fp32"),
                        help="the fp32 artefact directory (embedrt export --variant fp32)")
    parser.add_argument("--sts", type=Path, default=SHIPPED_STS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a few sentences, one repeat: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    results = measure(args)
    env = {**run_context(THREADS, THREADS, list(sys.argv)), "isa_detected": quantize.detect_isa()}
    (args.out / "results.json").write_text(
        json.dumps({"env": env, "results": results}, indent=2), encoding="utf-8"
    )
    write_markdown(args.out / "results.md", results, env)


if __name__ == "__main__":
    main()
