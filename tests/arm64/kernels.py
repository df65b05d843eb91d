"""What onnxruntime's CPU kernels do with the ops embedrt's quantised artefacts use, per CPU.

A measurement script (issue 14), not a test: it decides whether ``--isa arm64`` needs a graph
of its own.

    python tests/arm64/kernels.py build DIR        # x86, needs onnx ([export] extra)
    python tests/arm64/kernels.py run DIR OUT.npz  # any CPU, base install
    python tests/arm64/kernels.py compare DIR A.npz B.npz...   # table: exactness, diff to A

Each probe is a one-node graph at all-MiniLM-L6-v2's sizes (hidden 384, FFN 1536, 12 heads).
Integer GEMMs get two inputs: random codes, and "extreme" codes (activations 255 or -128,
weights at the limits of their type) which saturate any kernel that sums u8 x s8 products in
16 bits (x86 ``vpmaddubsw`` without VNNI); their exact int32 result is computed in numpy.
Timing is not measured: under qemu it says nothing about a real ARM core.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

M, K, N = 64, 384, 1536
BATCH, SEQ, HIDDEN, HEADS = 2, 32, 384, 12
INT_TYPES = {"u8": np.uint8, "s8": np.int8}
LIMITS = {"u8": (0, 255), "s8": (-128, 127)}


def _codes(rng: np.random.Generator, kind: str, shape: tuple[int, ...], extreme: bool) -> np.ndarray:
    low, high = LIMITS[kind]
    if extreme:  # every product at its largest magnitude: 255 x 127 / -128 x -128 ...
        value = high if kind == "u8" else low
        return np.full(shape, value, dtype=INT_TYPES[kind])
    return rng.integers(low, high + 1, size=shape).astype(INT_TYPES[kind])


def _weights(rng: np.random.Generator, kind: str, shape: tuple[int, ...], extreme: bool) -> np.ndarray:
    low, high = LIMITS[kind]
    if extreme:
        return np.where(rng.random(shape) < 0.5, low, high).astype(INT_TYPES[kind])
    return rng.integers(low, high + 1, size=shape).astype(INT_TYPES[kind])


def _zero(kind: str) -> np.ndarray:
    return np.array(0, dtype=INT_TYPES[kind])


def probes() -> dict[str, tuple[object, dict[str, np.ndarray], dict[str, object]]]:
    """``{name: (model, feeds, facts)}``; facts carry the exact int32 result where one exists."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(14)
    out: dict[str, tuple[object, dict[str, np.ndarray], dict[str, object]]] = {}

    def model(
        nodes: list[object], inputs: list[object], outputs: list[object], inits: dict[str, np.ndarray]
    ) -> object:
        graph = helper.make_graph(nodes, "probe", inputs, outputs,
                                  [numpy_helper.from_array(v, k) for k, v in inits.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                       helper.make_opsetid("com.microsoft", 1)])

    def vi(name: str, dtype: int, shape: list[int | str]) -> object:
        return helper.make_tensor_value_info(name, dtype, shape)

    onnx_type = {"u8": TensorProto.UINT8, "s8": TensorProto.INT8}
    for a_kind, b_kind in (("u8", "s8"), ("u8", "u8"), ("s8", "s8"), ("s8", "u8")):
        for extreme in (False, True):
            tag = f"{a_kind}{b_kind}{'-extreme' if extreme else ''}"
            a = _codes(rng, a_kind, (M, K), extreme)
            b = _weights(rng, b_kind, (K, N), extreme)
            exact = a.astype(np.int64) @ b.astype(np.int64)
            inits = {"B": b, "azp": _zero(a_kind), "bzp": _zero(b_kind)}
            facts = {"exact": exact.astype(np.int32)}
            out[f"MatMulInteger {tag}"] = (
                model([helper.make_node("MatMulInteger", ["A", "B", "azp", "bzp"], ["Y"])],
                      [vi("A", onnx_type[a_kind], [M, K])], [vi("Y", TensorProto.INT32, [M, N])], inits),
                {"A": a}, facts)
            scales = {"as": np.array(0.01, np.float32), "bs": np.full(N, 0.002, np.float32)}
            out[f"MatMulIntegerToFloat {tag}"] = (
                model([helper.make_node("MatMulIntegerToFloat", ["A", "B", "as", "bs", "azp", "bzp"], ["Y"],
                                        domain="com.microsoft")],
                      [vi("A", onnx_type[a_kind], [M, K])], [vi("Y", TensorProto.FLOAT, [M, N])],
                      {**inits, **scales}),
                {"A": a}, {"exact": (exact * 0.01 * 0.002).astype(np.float32)})

    x = (rng.standard_normal((M, K)) * 3).astype(np.float32)
    out["DynamicQuantizeLinear"] = (
        model([helper.make_node("DynamicQuantizeLinear", ["X"], ["Y", "S", "Z"])],
              [vi("X", TensorProto.FLOAT, [M, K])],
              [vi("Y", TensorProto.UINT8, [M, K]), vi("S", TensorProto.FLOAT, []),
               vi("Z", TensorProto.UINT8, [])],
              {}),
        {"X": x}, {})
    for b_kind in ("s8", "u8"):
        b = _weights(rng, b_kind, (K, N), False)
        out[f"DynamicQuantizeMatMul {b_kind}"] = (
            model([helper.make_node("DynamicQuantizeMatMul", ["X", "B", "bs", "bzp"], ["Y"],
                                    domain="com.microsoft")],
                  [vi("X", TensorProto.FLOAT, [M, K])], [vi("Y", TensorProto.FLOAT, [M, N])],
                  {"B": b, "bs": np.full(N, 0.002, np.float32), "bzp": np.zeros(N, INT_TYPES[b_kind])}),
            {"X": x}, {})

    for w_kind in ("s8", "u8"):
        for extreme in (False, True):
            tag = f"u8 x {w_kind}{' extreme' if extreme else ''}"
            inp = _codes(rng, "u8", (BATCH, SEQ, HIDDEN), extreme)
            w = _weights(rng, w_kind, (HIDDEN, 3 * HIDDEN), extreme)
            zp = np.full(3 * HIDDEN, 0 if w_kind == "s8" else 128, INT_TYPES[w_kind])
            inits = {"W": w, "bias": np.zeros(3 * HIDDEN, np.float32), "is": np.array(0.02, np.float32),
                     "ws": np.full(3 * HIDDEN, 0.001, np.float32), "izp": np.array(128, np.uint8), "wzp": zp}
            out[f"QAttention {tag}"] = (
                model([helper.make_node("QAttention", ["I", "W", "bias", "is", "ws", "mask", "izp", "wzp"],
                                        ["Y"],
                                        domain="com.microsoft", num_heads=HEADS)],
                      [vi("I", TensorProto.UINT8, [BATCH, SEQ, HIDDEN]),
                       vi("mask", TensorProto.INT32, [BATCH])],
                      [vi("Y", TensorProto.FLOAT, [BATCH, SEQ, HIDDEN])], inits),
                {"I": inp, "mask": np.array([SEQ, SEQ // 2], np.int32)}, {})

    ids = rng.integers(0, 1000, size=(BATCH, SEQ)).astype(np.int64)
    for bits, block in ((8, 128), (4, 32)):
        codes = rng.integers(0, 2**bits, size=(1000, HIDDEN)).astype(np.uint8)
        packed = codes if bits == 8 else (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
        scales = (rng.random((1000, HIDDEN // block)) * 0.01 + 0.001).astype(np.float32)
        zp = 2 ** (bits - 1)
        exact = ((codes.astype(np.float32) - zp).reshape(1000, HIDDEN // block, block) * scales[..., None])
        out[f"GatherBlockQuantized {bits}-bit block {block}"] = (
            model([helper.make_node("GatherBlockQuantized", ["T", "ids", "s"], ["Y"], domain="com.microsoft",
                                    bits=bits, block_size=block, gather_axis=0, quantize_axis=1)],
                  [vi("ids", TensorProto.INT64, [BATCH, SEQ])],
                  [vi("Y", TensorProto.FLOAT, [BATCH, SEQ, HIDDEN])],
                  {"T": packed, "s": scales}),
                {"ids": ids}, {"exact": exact.reshape(1000, HIDDEN)[ids]})

    for bits in (4, 8):
        for level in (0, 4):
            block = 32
            codes = rng.integers(0, 2**bits, size=(N, K)).astype(np.uint8)
            blob = codes if bits == 8 else (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
            blob = blob.reshape(N, K // block, block * bits // 8)
            scales = (rng.random(N * K // block) * 0.01 + 0.001).astype(np.float32)
            out[f"MatMulNBits {bits}-bit accuracy_level {level}"] = (
                model([helper.make_node("MatMulNBits", ["X", "B", "s"], ["Y"], domain="com.microsoft",
                                        K=K, N=N, bits=bits, block_size=block, accuracy_level=level)],
                      [vi("X", TensorProto.FLOAT, [M, K])], [vi("Y", TensorProto.FLOAT, [M, N])],
                      {"B": blob, "s": scales}),
                {"X": x}, {})
    return out


def build(directory: Path) -> None:
    """Write each probe's model, feeds and facts under ``directory`` (needs onnx)."""
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    index = {}
    for i, (name, (model, feeds, facts)) in enumerate(probes().items()):
        onnx.save(model, directory / f"{i:02d}.onnx")
        np.savez(directory / f"{i:02d}.npz", **{f"feed:{k}": v for k, v in feeds.items()},
                 **{f"fact:{k}": v for k, v in facts.items()})
        index[name] = f"{i:02d}"
    (directory / "index.json").write_text(json.dumps(index, indent=1))


def run(directory: Path, out: Path) -> None:
    """Run every probe with onnxruntime (1 thread); failures are recorded, not raised."""
    import platform

    import onnxruntime as ort

    results: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for name, stem in json.loads((directory / "index.json").read_text()).items():
        data = np.load(directory / f"{stem}.npz")
        feeds = {k[5:]: data[k] for k in data.files if k.startswith("feed:")}
        try:
            session = ort.InferenceSession(str(directory / f"{stem}.onnx"), options,
                                           providers=["CPUExecutionProvider"])
            results[name] = session.run(None, feeds)[0]
        except Exception as err:  # noqa: BLE001  # recording what the kernel refuses is the point
            errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    meta = {"machine": platform.machine(), "onnxruntime": ort.__version__, "errors": errors}
    np.savez(out, __meta__=np.array(json.dumps(meta)), **results)


def compare(directory: Path, first: Path, others: list[Path]) -> None:
    """Print, per probe: exact or not (where numpy knows the answer), and the diff to ``first``."""
    index = json.loads((directory / "index.json").read_text())
    runs = [(path, np.load(path)) for path in (first, *others)]
    metas = [json.loads(str(data["__meta__"])) for _, data in runs]
    labels = [path.stem for path, _ in runs]
    print("| probe | " + " | ".join(labels) + " |")
    print("| --- |" + " --- |" * len(labels))
    for name, stem in index.items():
        facts = np.load(directory / f"{stem}.npz")
        exact = facts["fact:exact"] if "fact:exact" in facts.files else None
        cells = []
        for (_, data), meta in zip(runs, metas, strict=True):
            if name not in data.files:
                cells.append("refused: " + meta["errors"].get(name, "?")[:90])
                continue
            y = data[name]
            parts = []
            if exact is not None:
                if y.dtype.kind == "f":
                    rel = float(np.abs(y - exact).max() / max(np.abs(exact).max(), 1e-30))
                    parts.append("exact" if rel < 1e-6 else f"max rel err {rel:.2g}")
                else:
                    wrong = int((y != exact).sum())
                    worst = int(np.abs(y.astype(np.int64) - exact).max())
                    parts.append("exact" if wrong == 0 else f"WRONG ({wrong} cells, max err {worst})")
            ref = runs[0][1]
            if name in ref.files and data is not ref:
                base = ref[name]
                if np.array_equal(y, base):
                    parts.append("bitwise = " + labels[0])
                else:
                    diff = float(np.abs(y.astype(np.float64) - base.astype(np.float64)).max())
                    scale = float(np.abs(base.astype(np.float64)).max()) or 1.0
                    parts.append(f"max diff to {labels[0]} {diff:.3g} (rel {diff / scale:.2g})")
            cells.append(", ".join(parts) or "ran")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "build":
        build(Path(argv[1]))
    elif len(argv) == 3 and argv[0] == "run":
        run(Path(argv[1]), Path(argv[2]))
    elif len(argv) >= 3 and argv[0] == "compare":
        compare(Path(argv[1]), Path(argv[2]), [Path(p) for p in argv[3:]])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
