"""Could OpenVINO run embedrt's int8 faster at embedrt's fidelity? The attempts, measured in one run.

    python -m embedrt.bench.studies.openvino_int8 --out DIR [--fp32 DIR] [--int8 DIR] [--bf16 DIR]
        [--forms qdq,nncf] [--quick]

OpenVINO + NNCF int8 is the fastest peer of ``embedrt bench`` on CPUs without AMX, but it
misses embedrt's int8 fidelity gate (held-out min cosine >= 0.99, mean >= 0.998) and its
vectors depend on their batch. This script measures, beside embedrt int8 on onnxruntime (and
the bf16 artefact when given), the OpenVINO int8 forms one could adopt:

- ``qdq``: embedrt's own int8 decisions (static calibrated scales, smoothing, fp32 neurons;
  :mod:`embedrt.export.quantize.qdq`) as a standard QDQ graph that OpenVINO compiles into its
  int8 kernels, with the FFN-down input as int8 weights under OpenVINO's per-token dynamic
  quantisation, as a static scale, or float; the float rest at f32 or bf16;
- ``nncf``: NNCF post-training quantisation (static activation ranges) as the peer makes it,
  and with SmoothQuant at alpha 0.5; NNCF int8 weight compression with OpenVINO's dynamic
  activation quantisation (per token, in groups of 32 or 64 channels: batch-invariant by
  construction), the rest in bf16 where the CPU has it.

Per form: cosine to sentence-transformers on torch over the STS-B dev sentences (min/mean),
batch invariance (a sentence alone vs in shuffled mixed-length batches of 8/32/128, two probe
sets), how many
of OpenVINO's FullyConnected kernels run on int8 inputs, throughput at batch 32 on
short/medium/long texts (median of repeats, systems interleaved) and batch-1 p50.
All run through embedrt's own tokenise-batch-pool path; calibration is embedrt's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from embedrt.bench.context import run_context
from embedrt.bench.peers import openvino_embedder
from embedrt.bench.quality import batch_invariance, cosine_stats
from embedrt.bench.speed import latency, throughput
from embedrt.bench.systems import EmbedrtSystem, SystemSpec
from embedrt.bench.workloads import SHIPPED_STS, build_workload, read_sts, token_counts

logger = logging.getLogger("openvino_int8")
THREADS = 2
BATCH_SIZE = 32
INVARIANCE_BATCH_SIZES = (8, 32, 128)
FORM_GROUPS = ("qdq", "nncf")


class _OpenVINOForm:
    """An OpenVINO model file behind embedrt's Embedder, with extra compile properties."""

    def __init__(self, name: str, fp32: Path, model_file: Path, hint: str, config: dict[str, Any]) -> None:
        self._embedder, session = openvino_embedder(fp32, model_file, THREADS, hint, name, config)
        self.spec = SystemSpec(name, "openvino", str(fp32), THREADS)
        self.metadata = {"engine": session.engine, "int8_kernels": int8_kernels(model_file, hint, config)}

    def embed(self, texts: Sequence[str], batch_size: int | None) -> npt.NDArray[np.float32]:
        """Embed through embedrt's batching with this form running each call."""
        return self._embedder.embed(list(texts), batch_size=batch_size)


def int8_kernels(model_file: Path, hint: str, config: dict[str, Any]) -> str:
    """``int8/all``: OpenVINO's FullyConnected kernels with u8/i8 inputs after compilation."""
    import openvino

    compiled = openvino.Core().compile_model(
        str(model_file), "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": THREADS, **config}
    )
    kinds = [
        str(op.get_rt_info()["runtimePrecision"].astype(str))
        for op in compiled.get_runtime_model().get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"
    ]
    return f"{sum(kind in ('u8', 'i8') for kind in kinds)}/{len(kinds)}"


def build_qdq_forms(fp32: Path, work: Path) -> dict[str, tuple[Path, str, dict[str, Any]]]:
    """The QDQ graphs of embedrt's int8 decisions; returns (file, precision hint, properties) by name."""
    from embedrt.export.quantize.qdq import FFN_DOWN_FLOAT, FFN_DOWN_STATIC, FFN_DOWN_WEIGHTS, write_qdq
    from embedrt.export.quantize.recipe import SCALES_STATIC, recipe_for
    from embedrt.runtime.backends import BF16_CPU_FLAGS
    from embedrt.runtime.cpus import cpu_flags

    recipe = recipe_for("int8", "avx512_vnni", scales=SCALES_STATIC)
    work.mkdir(parents=True, exist_ok=True)
    hints = ("f32", "bf16") if cpu_flags() & BF16_CPU_FLAGS else ("f32",)
    labels = {
        FFN_DOWN_WEIGHTS: "FFN-down per-token (OpenVINO dynamic)",
        FFN_DOWN_FLOAT: "FFN-down float",
        FFN_DOWN_STATIC: "FFN-down static",
    }
    forms: dict[str, tuple[Path, str, dict[str, Any]]] = {}
    for down, label in labels.items():
        target = work / f"qdq-{down}.onnx"
        write_qdq(fp32 / "model.onnx", target, recipe, down)
        for hint in hints if down != FFN_DOWN_STATIC else hints[-1:]:
            forms[f"embedrt QDQ int8, {label}, rest {hint}"] = (target, hint, {})
    return forms


def build_nncf_forms(fp32: Path, work: Path) -> dict[str, tuple[Path, str, dict[str, Any]]]:
    """Make each NNCF int8 form's IR file; returns (file, precision hint, properties) by name."""
    import nncf
    import openvino
    from embedrt.export.quantize import calibration_feeds
    from embedrt.runtime import Manifest
    from embedrt.runtime.backends import BF16_CPU_FLAGS
    from embedrt.runtime.cpus import cpu_flags
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    manifest = Manifest.load(fp32)
    feeds = [{name: feed[name] for name in manifest.inputs}
             for feed in calibration_feeds(fp32 / "tokenizer.json", max_seq_length=manifest.max_seq_length)]
    core = openvino.Core()
    work.mkdir(parents=True, exist_ok=True)
    rest = "bf16" if cpu_flags() & BF16_CPU_FLAGS else "f32"
    forms: dict[str, tuple[Path, str, dict[str, Any]]] = {}

    def save(name: str, model: Any, hint: str, config: dict[str, Any]) -> None:
        target = work / f"{name}.xml"
        openvino.save_model(model, str(target))
        forms[name] = (target, hint, config)

    def ptq(**options: Any) -> Any:
        return nncf.quantize(core.read_model(str(fp32 / "model.onnx")), nncf.Dataset(feeds),
                             model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds), **options)

    save("nncf-int8 (the peer)", ptq(), "bf16", {})
    sq = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=0.5))
    save("nncf-int8, SmoothQuant 0.5", ptq(advanced_parameters=sq), "bf16", {})
    compressed = nncf.compress_weights(core.read_model(str(fp32 / "model.onnx")),
                                       mode=nncf.CompressWeightsMode.INT8_SYM)
    for group in (32, 64):
        save(f"int8 weights + dynamic per-token activations (groups of {group})", compressed, rest,
             {"DYNAMIC_QUANTIZATION_GROUP_SIZE": str(group)})
    return forms


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build the forms and measure every system; returns the results by system name.

    The forms' model files live in a temporary folder for the run (weights stay out of ``--out``).
    """
    with tempfile.TemporaryDirectory(prefix="embedrt-openvino-int8-") as work:
        return _measure(args, Path(work))


def _measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from embedrt.export.parity import reference_embeddings
    from embedrt.runtime import Manifest
    from embedrt.runtime.pooling import row_cosines

    pairs, _ = read_sts(args.sts)
    sentences = list(dict.fromkeys(text for pair in pairs for text in pair))
    if args.quick:
        sentences = sentences[:48]
    reference = reference_embeddings(Path(Manifest.load(args.fp32).source.path), sentences)
    artefacts = {"embedrt int8 (onnxruntime)": args.int8, "embedrt bf16 (OpenVINO)": args.bf16}
    systems: list[Any] = [EmbedrtSystem(SystemSpec(name, "embedrt", str(path), THREADS))
                          for name, path in artefacts.items() if path is not None]
    builders = {"qdq": build_qdq_forms, "nncf": build_nncf_forms}
    for group in args.forms:
        for name, (model_file, hint, config) in builders[group](args.fp32, work / group).items():
            systems.append(_OpenVINOForm(name, args.fp32, model_file, hint, config))
    sizes = {"short": 512, "medium": 256, "long": 128}
    if args.quick:
        sizes = {"short": 32, "medium": 16, "long": 8}
    workload = build_workload(args.fp32 / "tokenizer.json", sizes, args.sts, None)
    # Two probe sets (spread over the file, and its first 48): OpenVINO's float kernels round
    # differently at some batch shapes, and which probes a static quantiser amplifies that in varies.
    probe_sets = [sentences[:: max(1, len(sentences) // 48)][:48], sentences[:48]]
    fillers = [*sentences[:500], *workload.buckets["long"]]
    results: dict[str, Any] = {}
    for system in systems:
        stats = cosine_stats(row_cosines(system.embed(sentences, BATCH_SIZE), reference))
        invariance = [
            batch_invariance(system, probes, fillers, INVARIANCE_BATCH_SIZES) for probes in probe_sets
        ]
        results[system.spec.name] = {
            "engine": system.metadata["engine"],
            "int8_kernels": system.metadata.get("int8_kernels", "-"),  # OpenVINO forms only
            "cos_min": stats["min"], "cos_mean": stats["mean"],
            "invariance": min(float(v["min"] or 0.0) for found in invariance for v in found.values()),
            "invariance_by_batch": {
                size: min(float(found[size]["min"] or 0.0) for found in invariance) for size in invariance[0]
            },
            "speed": {},
        }
        logger.warning("%s: %s", system.spec.name, results[system.spec.name])
    for bucket, texts in workload.buckets.items():
        tokens = int(token_counts(args.fp32 / "tokenizer.json", texts).sum())
        speed = throughput(systems, texts, tokens, BATCH_SIZE, args.repeats, lambda: None)
        for name, figures in speed.items():
            results[name]["speed"][bucket] = figures["texts_per_s"]
    single = latency(systems, workload.buckets["short"][:64], 5, args.repeats, lambda: None)
    for name, figures in single.items():
        results[name]["speed"]["b1_p50_ms"] = figures["p50_ms"]
    return results


GATE_MIN, GATE_MEAN, GATE_INVARIANCE = 0.99, 0.998, 0.99999


def passes_gate(result: dict[str, Any]) -> bool:
    """Whether a system's figures meet embedrt's int8 fidelity gate."""
    return bool(
        result["cos_min"] >= GATE_MIN and result["cos_mean"] >= GATE_MEAN
        and result["invariance"] >= GATE_INVARIANCE
    )


def write_markdown(path: Path, results: dict[str, Any], env: dict[str, Any]) -> None:
    """The results as a Markdown table, ratios to embedrt int8 from the same run."""
    base = next(iter(results.values()))["speed"]
    lines = [
        f"# OpenVINO int8 forms vs embedrt int8, all-MiniLM-L6-v2 ({env['cpu']['model']}, "
        f"{THREADS} threads)",
        "",
        f"- command: `{env['command']}`",
        f"- date: {env['date']}; CPU flags: "
        + ", ".join(flag for flag, present in env["cpu"]["flags"].items() if present),
        "- fidelity: cosine to sentence-transformers on torch, STS-B dev sentences; invariance: a "
        "sentence alone vs in shuffled mixed-length batches of 8, 32 and 128 (min cosine over two "
        "sets of 48 probes)",
        "- int8 FC: OpenVINO FullyConnected kernels with int8 inputs after compilation / all",
        f"- gate: cos min >= {GATE_MIN}, mean >= {GATE_MEAN}, invariance >= {GATE_INVARIANCE}; "
        f"load average at the start: {env.get('load_average', '?')}",
        "- speed: texts/s at batch 32 (× embedrt int8, same run), batch-1 p50 on short texts",
        "",
        "| system | engine | int8 FC | cos min / mean | invariance | gate | short | medium | long "
        "| b1 p50 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        speed = r["speed"]
        cells = [f"{speed[b]:.1f} ({speed[b] / base[b]:.2f}×)" for b in ("short", "medium", "long")]
        lines.append(f"| {name} | {r['engine']} | {r.get('int8_kernels', '')} | "
                     f"{r['cos_min']:.4f} / {r['cos_mean']:.5f} | {r['invariance']:.7f} | "
                     f"{'pass' if passes_gate(r) else 'FAIL'} | " + " | ".join(cells)
                     + f" | {speed['b1_p50_ms']:.2f} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _form_groups(text: str) -> list[str]:
    groups = [g for g in text.split(",") if g]
    unknown = [g for g in groups if g not in FORM_GROUPS]
    if unknown or not groups:
        raise argparse.ArgumentTypeError(
            f"form groups {unknown or text!r} are not known; choose from: {', '.join(FORM_GROUPS)}"
        )
    return groups


def main(argv: Sequence[str] | None = None) -> None:
    """Run from the command line (see the module docstring)."""
    from embedrt.runtime.home import artefact_dir

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fp32", type=Path, default=artefact_dir("all-MiniLM-L6-v2", "fp32"))
    parser.add_argument("--int8", type=Path, default=artefact_dir("all-MiniLM-L6-v2", "int8"))
    parser.add_argument("--bf16", type=Path, default=None, help="the bf16 artefact, to compare too")
    parser.add_argument("--sts", type=Path, default=SHIPPED_STS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forms", type=_form_groups, default=list(FORM_GROUPS),
                        help=f"comma-separated groups of OpenVINO forms: {', '.join(FORM_GROUPS)}")
    parser.add_argument("--quick", action="store_true", help="a few sentences, one repeat: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())  # the machine is shared: say how busy it was
    results = measure(args)
    env = {**run_context(THREADS, THREADS, list(sys.argv)), "load_average": load}
    (args.out / "results.json").write_text(json.dumps({"env": env, "results": results}, indent=2),
                                           encoding="utf-8")
    write_markdown(args.out / "results.md", results, env)


if __name__ == "__main__":
    main()
