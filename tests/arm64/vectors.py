"""Cross-architecture vector check: the same artefacts embed the same texts on x86 and arm64.

Run by ``.ci/arm64/run`` in three steps:

    python tests/arm64/vectors.py prepare   ROOT NAME...         # x86, [export] extra
    python tests/arm64/vectors.py reference ROOT OUT.npz NAME...  # x86
    python tests/arm64/vectors.py compare   ROOT REF.npz NAME...  # arm64, base install only

``prepare`` exports each artefact that is not under ROOT yet (names as tests/conftest.py
gives them: ``tiny-bert``, ``tiny-bert-int8``, ``minilm-fp32``, ``minilm-int8-edge``...).
``reference`` embeds :func:`texts` with each artefact and saves the vectors; ``compare``
embeds them again (on arm64) and fails when any row's cosine to the reference is below the
variant's gate in :data:`GATES`. Only ``compare`` must run on the base install.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
STSB_DEV = REPO / "bench" / "data" / "stsb-dev" / "dev.tsv"

# Minimum cosine of every row to the x86 vector of the same artefact (issue 14). fp32 must be
# the same computation up to float reassociation; int8 kernels differ between x86 (VNNI) and
# ARM (NEON/dot-product), so the int8 variants get the looser gate.
GATES: dict[str, float] = {
    "fp32": 0.99999,
    "fp32-optimised": 0.99999,
    "int8": 0.999,
    "int8-edge": 0.999,
}
STS_SENTENCES = 96  # first unique sentence1 entries of STS-B dev


def texts() -> list[str]:
    """The texts both architectures embed: STS-B dev sentences plus the hard cases.

    The hard cases: the empty string, non-ASCII text, and inputs over 128 and over 256 tokens
    (all-MiniLM-L6-v2's tokenizer.json cuts at 128, the model's limit is 256).
    """
    with STSB_DEV.open(encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        seen = dict.fromkeys(row["sentence1"] for row in rows)
    sts = list(seen)[:STS_SENTENCES]
    medium = " ".join(sts[:12])  # about 150 tokens
    long = " ".join(sts[:40])  # about 500 tokens: truncated at max_seq_length
    return [*sts, "", "Ünïcödé façade — 東京で寿司を食べた。", "a", medium, long]


def _split_name(name: str) -> tuple[str | None, str]:
    """``tiny-bert-int8`` -> ("bert", "int8"); ``minilm-fp32`` -> (None, "fp32")."""
    for prefix, arch in (("tiny-distilbert", "distilbert"), ("tiny-bert", "bert"), ("minilm", None)):
        if name == prefix:
            return arch, "fp32"
        if name.startswith(prefix + "-"):
            return arch, name[len(prefix) + 1 :]
    raise SystemExit(f"artefact name {name!r}: expected tiny-bert[-VARIANT], tiny-distilbert[-VARIANT] "
                     "or minilm-VARIANT (the names tests/conftest.py uses)")


def prepare(root: Path, names: list[str]) -> None:
    """Export every named artefact that ``root`` does not hold yet (needs the [export] extra)."""
    import importlib.util
    import tempfile

    from embedrt.export import ExportOptions, export_model

    missing = [name for name in names if not (root / name / "manifest.json").is_file()]
    if not missing:
        return
    spec = importlib.util.spec_from_file_location("_tiny_models", REPO / "tests" / "_tiny_models.py")
    assert spec is not None and spec.loader is not None
    tiny_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_models)
    with tempfile.TemporaryDirectory(prefix="embedrt-arm64-sources-") as scratch:
        sources: dict[str, Path] = {}
        for name in missing:
            arch, variant = _split_name(name)
            source = None
            if arch is not None:
                if arch not in sources:
                    sources[arch] = tiny_models.build(Path(scratch), arch)
                source = sources[arch]
            print(f"x86: exporting {name} (variant {variant})", file=sys.stderr)
            export_model(source, root / name, ExportOptions(variant=variant))


def _embed_all(root: Path, names: list[str]) -> dict[str, np.ndarray]:
    from embedrt.runtime import Embedder

    sentences = texts()
    # spin=False: under emulation, spinning worker threads take the cores the emulated main
    # thread needs (the vectors do not depend on it)
    return {name: Embedder.load(root / name, spin=False).embed(sentences) for name in names}


def reference(root: Path, out: Path, names: list[str]) -> None:
    """Embed :func:`texts` with each artefact and save the vectors (and where) to ``out``."""
    import onnxruntime

    vectors = _embed_all(root, names)
    where = {"machine": platform.machine(), "onnxruntime": onnxruntime.__version__}
    np.savez(out, __where__=np.array(json.dumps(where)), **vectors)


def compare(root: Path, ref: Path, names: list[str]) -> int:
    """Embed again, compare row cosines to ``ref`` against :data:`GATES`; 0 when all pass."""
    import onnxruntime
    from embedrt.runtime import Manifest
    from embedrt.runtime.pooling import row_cosines

    saved = np.load(ref)
    where = json.loads(str(saved["__where__"]))
    vectors = _embed_all(root, names)
    print(f"reference: {where['machine']}, onnxruntime {where['onnxruntime']}; here: "
          f"{platform.machine()}, onnxruntime {onnxruntime.__version__}; {len(texts())} texts")
    print(f"{'artefact':<22} {'variant':<15} {'min cos':>10} {'mean cos':>10} {'gate':>8}  result")
    failures = []
    for name in names:
        variant = Manifest.load(root / name).variant
        if variant not in GATES:
            raise SystemExit(f"{name}: variant {variant!r} has no gate; known: {', '.join(GATES)}")
        if name not in saved.files:
            raise SystemExit(f"{name}: not in the reference file {ref}; run `vectors.py reference` with it")
        cosines = row_cosines(vectors[name], saved[name])
        ok = bool(cosines.min() >= GATES[variant])
        print(f"{name:<22} {variant:<15} {cosines.min():>10.7f} {cosines.mean():>10.7f} "
              f"{GATES[variant]:>8}  {'ok' if ok else 'FAIL'}")
        if not ok:
            worst = int(cosines.argmin())
            failures.append(f"{name} ({variant}): text {worst} has cosine {cosines[worst]:.7f} to the "
                            f"{where['machine']} vector, below the gate {GATES[variant]}")
    for message in failures:
        print(f"arm64 vector check failed: {message}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_prepare = sub.add_parser("prepare", help="export the artefacts ROOT lacks (x86, [export] extra)")
    p_prepare.add_argument("root", type=Path)
    p_prepare.add_argument("names", nargs="+")
    p_ref = sub.add_parser("reference", help="write the reference vectors")
    p_ref.add_argument("root", type=Path)
    p_ref.add_argument("out", type=Path)
    p_ref.add_argument("names", nargs="+")
    p_cmp = sub.add_parser("compare", help="compare with the reference vectors")
    p_cmp.add_argument("root", type=Path)
    p_cmp.add_argument("ref", type=Path)
    p_cmp.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.root, args.names)
        return 0
    if args.command == "reference":
        reference(args.root, args.out, args.names)
        return 0
    return compare(args.root, args.ref, args.names)


if __name__ == "__main__":
    sys.exit(main())
