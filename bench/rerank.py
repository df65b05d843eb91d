"""Reranker benchmark: embedrt's cross-encoder artefacts against sentence-transformers on torch.

``python -m embedrt.bench.rerank --model CROSS_ENCODER_DIR --artefact fp32=DIR --artefact int8=DIR``

Data: the held-out half of the shipped STS-B dev pairs (the trained MiniLM cross-encoder saw
the other half; :mod:`embedrt.export.rerank_train`). STS-B has no queries, so each held-out
pair becomes one: its ``sentence1`` is the query and its candidates are its own ``sentence2``
plus 19 ``sentence2`` of other held-out pairs, drawn with a fixed seed, the true one at a
seeded position (:func:`query_groups`). Reported, in one run, same threads for every system:

* fidelity of each artefact to ``CrossEncoder.predict`` on torch: max |score diff|, Spearman of
  all scores, identical rankings, top-10 agreement and NDCG@10 per query (the torch scores as
  gains), and int8 against fp32 the same way;
* quality: Spearman x100 of each system's score for the held-out pairs against the gold scores;
* batch invariance: ``1 - max |score alone - score in a batch of 32|``;
* speed: pairs per second at batch 32, median of interleaved rounds, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from embedrt.export.rerank_parity import agreement, spearman
from embedrt.export.rerank_train import ScoredPair, split_stsb
from embedrt.runtime.cpus import usable_cpus
from embedrt.runtime.reranker import Reranker

from .context import run_context
from .workloads import SHIPPED_STS

logger = logging.getLogger(__name__)

CANDIDATES = 20
GROUP_SEED = 7
BATCH = 32
Scores = npt.NDArray[np.float32]


def query_groups(
    pairs: Sequence[ScoredPair], candidates: int = CANDIDATES, seed: int = GROUP_SEED
) -> list[tuple[str, list[str]]]:
    """One (query, documents) group per pair: its sentence2 among ``candidates - 1`` others.

    The others are ``sentence2`` of other pairs (distinct texts, never the pair's own), drawn
    with ``seed``; the pair's own ``sentence2`` goes at a seeded position.
    """
    rng = random.Random(seed)
    texts = list(dict.fromkeys(p.sentence2 for p in pairs))
    groups = []
    for pair in pairs:
        others = rng.sample([t for t in texts if t != pair.sentence2], candidates - 1)
        others.insert(rng.randrange(candidates), pair.sentence2)
        groups.append((pair.sentence1, others))
    return groups


def positions(groups: Sequence[tuple[str, Sequence[str]]]) -> list[list[int]]:
    """Each group's pair positions in the flattened pair list."""
    out, start = [], 0
    for _, docs in groups:
        out.append(list(range(start, start + len(docs))))
        start += len(docs)
    return out


def run(
    model_dir: Path,
    artefacts: dict[str, Path],
    queries: int,
    threads: int,
    rounds: int = 3,
    sts: Path = SHIPPED_STS,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Measure every artefact and the torch CrossEncoder; return the results (JSON-ready)."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(threads)
    held_out = split_stsb(sts).held_out[:queries]
    groups = query_groups(split_stsb(sts).held_out)[:queries]
    pairs = [(q, d) for q, docs in groups for d in docs]
    gold_pairs = [(p.sentence1, p.sentence2) for p in held_out]
    gold = np.array([p.score for p in held_out])
    model = CrossEncoder(str(model_dir), device="cpu", local_files_only=True)
    rerankers = {name: Reranker.load(path, threads=threads) for name, path in artefacts.items()}
    systems: dict[str, Callable[[list[tuple[str, str]]], Scores]] = {
        "torch": lambda p: np.asarray(model.predict(p, batch_size=BATCH, show_progress_bar=False)),
    }
    for name, reranker in rerankers.items():
        systems[f"embedrt-{name}"] = _embedrt_system(reranker)
    onnx_peer = _sentence_transformers_onnx(model_dir)
    if onnx_peer is not None:
        systems["sentence-transformers-onnx"] = lambda p: np.asarray(
            onnx_peer.predict(p, batch_size=BATCH, show_progress_bar=False)
        )
    scores = {name: fn(pairs) for name, fn in systems.items()}
    where = positions(groups)
    fidelity = {
        name: agreement(scores["torch"], s, where).to_dict() for name, s in scores.items() if name != "torch"
    }
    if "embedrt-int8" in scores and "embedrt-fp32" in scores:
        fidelity["embedrt-int8 vs embedrt-fp32"] = agreement(
            scores["embedrt-fp32"], scores["embedrt-int8"], where
        ).to_dict()
    quality = {name: round(100 * spearman(fn(gold_pairs), gold), 2) for name, fn in systems.items()}
    invariance = {name: _invariance(r, pairs[:320]) for name, r in rerankers.items()}
    speed = _speed(systems, pairs, rounds)
    base = speed.get("embedrt-fp32")
    return {
        "context": run_context(threads, usable_cpus(), argv),
        "data": {
            "source": "STS-B dev, held-out half (bench/data/stsb-dev, CC-BY-SA 4.0)",
            "queries": len(groups),
            "candidates_per_query": CANDIDATES,
            "pairs": len(pairs),
            "gold_pairs": len(gold_pairs),
        },
        "fidelity_to_torch": fidelity,
        "stsb_spearman_x100": quality,
        "invariance": invariance,
        "pairs_per_second_batch32": speed,
        "ratio_to_embedrt_fp32": {n: round(v / base, 2) for n, v in speed.items()} if base else {},
    }


def _embedrt_system(reranker: Reranker) -> Callable[[list[tuple[str, str]]], Scores]:
    def score(pairs: list[tuple[str, str]]) -> Scores:
        return reranker.predict(pairs, batch_size=BATCH)

    return score


def _invariance(reranker: Reranker, pairs: list[tuple[str, str]]) -> float:
    """1 - max |score alone - score in shuffled batches of 32| (1.0: bit-for-bit equal)."""
    alone = np.array([reranker.predict([p])[0] for p in pairs])
    order = np.random.default_rng(0).permutation(len(pairs))
    batched = np.empty_like(alone)
    for start in range(0, len(order), BATCH):
        rows = order[start : start + BATCH]
        batched[rows] = reranker.predict([pairs[i] for i in rows], batch_size=BATCH)
    return float(1.0 - np.abs(alone - batched).max())


def _speed(
    systems: dict[str, Callable[[list[tuple[str, str]]], Scores]], pairs: list[tuple[str, str]], rounds: int
) -> dict[str, float]:
    """Pairs per second at batch 32: interleaved rounds (warm-up first), median."""
    sample = pairs[: min(len(pairs), 640)]
    for fn in systems.values():
        fn(sample[:BATCH])
    seconds: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(rounds):
        for name, fn in systems.items():
            start = time.perf_counter()
            fn(sample)
            seconds[name].append(time.perf_counter() - start)
    return {name: round(len(sample) / statistics.median(s), 1) for name, s in seconds.items()}


def _sentence_transformers_onnx(model_dir: Path) -> Any:
    """sentence-transformers' own ONNX backend on the same model, or None when it cannot load."""
    from sentence_transformers import CrossEncoder

    try:
        return CrossEncoder(str(model_dir), device="cpu", backend="onnx", local_files_only=True)
    except Exception as err:  # any failure of the peer is reported as its absence
        logger.warning("sentence-transformers ONNX backend skipped: %s", err)
        return None


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """``rerank.json`` and ``rerank.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "rerank.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    ctx, lines = results["context"], []
    lines += [
        "# Reranker benchmark\n",
        f"`{ctx['command']}`\n",
        f"CPU: {ctx['cpu']}, threads {ctx['threads']}, load average at start {ctx['load_average_start']}\n",
        f"Data: {results['data']}\n",
    ]
    lines += [
        "| system | pairs/s batch 32 | x embedrt fp32 | STS-B Spearman x100 | invariance |",
        "|---|---|---|---|---|",
    ]
    for name, rate in results["pairs_per_second_batch32"].items():
        short = name.removeprefix("embedrt-")
        lines.append(
            f"| {name} | {rate} | {results['ratio_to_embedrt_fp32'].get(name, '')} | "
            f"{results['stsb_spearman_x100'][name]} | {results['invariance'].get(short, '')} |"
        )
    lines += [
        "",
        "| vs reference | max abs diff | Spearman | same ranking | top-10 agreement mean / min | NDCG@10 |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in results["fidelity_to_torch"].items():
        lines.append(
            f"| {name} | {f['max_abs_diff']:.2e} | {f['spearman']:.6f} | {f['identical_rankings']:.3f} | "
            f"{f['mean_top_k_agreement']:.4f} / {f['min_top_k_agreement']:.2f} | {f['mean_ndcg_at_k']:.5f} |"
        )
    md_path = out / "rerank.md"
    md_path.write_text("\n".join(lines) + "\n")
    return [json_path, md_path]


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m embedrt.bench.rerank", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="the sentence-transformers CrossEncoder folder"
    )
    parser.add_argument("--artefact", action="append", default=[], help="NAME=DIR of an embedrt reranker")
    parser.add_argument("--queries", type=int, default=749, help="held-out queries (749: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results/rerank"))
    args = parser.parse_args(argv)
    artefacts = {}
    for item in args.artefact:
        name, _, path = item.partition("=")
        if not path:
            parser.error(f"--artefact {item!r}: expected NAME=DIR")
        artefacts[name] = Path(path)
    results = run(
        args.model,
        artefacts,
        args.queries,
        args.threads or usable_cpus(),
        args.rounds,
        argv=["python -m embedrt.bench.rerank", *(sys.argv[1:] if argv is None else argv)],
    )
    for path in write(results, args.out):
        logger.warning("wrote %s", path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
