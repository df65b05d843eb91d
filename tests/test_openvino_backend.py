"""The bf16 variant: the float32 graph run by OpenVINO at bfloat16 precision.

Real OpenVINO on a tiny model built in the session and on all-MiniLM-L6-v2 against torch.
Where OpenVINO is not installed (the base install) the artefact must fail to load with an
error naming the extra; that path runs for real there, and here by hiding the module.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from embedrt.runtime import ArtefactError, Embedder, Manifest, MissingExtraError
from embedrt.runtime.backends import BF16_CPU_FLAGS
from embedrt.runtime.cpus import cpu_flags
from embedrt.runtime.pooling import row_cosines

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.extras("openvino")
# bf16 in hardware: OpenVINO's native bf16 kernels (it emulates bf16 on other AVX-512 CPUs).
BF16_CPU = bool(cpu_flags() & BF16_CPU_FLAGS)
Invariance = Callable[[Embedder, list[str], tuple[int, ...]], float]  # conftest's fixture


def _texts(words: list[str]) -> list[str]:
    """Mixed lengths, 1 to ~20 words, so batches pad."""
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + (i * 5) % 20)) for i in range(40)]


def test_the_manifest_records_the_engine(tiny_bert_bf16: Path, tiny_bert: Path) -> None:
    recipe = Manifest.load(tiny_bert_bf16).recipe
    assert (recipe.backend, recipe.dtype, recipe.quantisation) == ("openvino", "bfloat16", None)
    # Every other variant, and a manifest written before the field existed, is onnxruntime's.
    assert Manifest.load(tiny_bert).recipe.backend == "onnxruntime"
    data = json.loads((tiny_bert / "manifest.json").read_text())
    del data["recipe"]["backend"]
    assert Manifest.from_dict(data).recipe.backend == "onnxruntime"


@needs_openvino
def test_bf16_runs_on_openvino_at_fp32_fidelity(
    tiny_bert_bf16: Path, tiny_bert: Path, tiny_model_words: list[str]
) -> None:
    texts = _texts(tiny_model_words)
    bf16 = Embedder.load(tiny_bert_bf16)
    vectors = bf16.embed(texts)
    reference = Embedder.load(tiny_bert).embed(texts)
    assert Embedder.load(tiny_bert).engine == "onnxruntime"
    assert bf16.engine in ("openvino bf16", "openvino f32")
    if BF16_CPU:
        assert bf16.engine == "openvino bf16"
    cosines = row_cosines(vectors, reference)
    assert cosines.min() >= 0.9999
    if bf16.engine == "openvino bf16":  # really bf16: not the float32 result to float32 rounding
        assert np.abs(vectors - reference).max() > 1e-5


@needs_openvino
def test_bf16_is_batch_invariant(
    tiny_bert_bf16: Path, tiny_model_words: list[str], invariance: Invariance
) -> None:
    worst = invariance(Embedder.load(tiny_bert_bf16), _texts(tiny_model_words), (4, 16, 40))
    assert worst >= 0.9999


@needs_openvino
def test_one_embedder_serves_several_threads(tiny_bert_bf16: Path, tiny_model_words: list[str]) -> None:
    texts = _texts(tiny_model_words)
    embedder = Embedder.load(tiny_bert_bf16, threads=1)
    expected = embedder.embed(texts, batch_size=8)
    start = threading.Barrier(4)

    def work(worker: int) -> list[np.ndarray]:
        start.wait()  # all four at once
        # Each worker its own order of batch sizes, so requests of different shapes overlap.
        return [embedder.embed(texts, batch_size=int(size)) for size in np.roll([8, 3, 40, 5, 16], worker)]

    with ThreadPoolExecutor(4) as pool:
        runs = [vectors for result in pool.map(work, range(4)) for vectors in result]
    assert len(runs) == 20
    for vectors in runs:  # every call of every thread, not only the last
        assert row_cosines(vectors, expected).min() >= 0.99999


@needs_openvino
def test_bf16_through_the_cli_and_a_real_server(
    tiny_bert_bf16: Path, tiny_model_words: list[str], tmp_path: Path, running_server: Callable[..., Any]
) -> None:
    """The artefact as users meet it: `embedrt embed` and an `embedrt serve` process."""
    import subprocess

    import httpx

    sample = _texts(tiny_model_words)[:6]
    offline = Embedder.load(tiny_bert_bf16).embed(sample)
    command = [sys.executable, "-m", "embedrt.cli", "embed", *sample, "--model", str(tiny_bert_bf16)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    cli = np.array([json.loads(line)["embedding"] for line in done.stdout.splitlines()], np.float32)
    assert cli.shape == offline.shape and row_cosines(cli, offline).min() >= 0.99999
    with running_server(tiny_bert_bf16, tmp_path) as server:
        response = httpx.post(f"{server.url}/v1/embeddings", json={"input": sample}, timeout=120)
    assert response.status_code == 200, response.text
    served = np.array([item["embedding"] for item in response.json()["data"]], np.float32)
    assert served.shape == offline.shape and row_cosines(served, offline).min() >= 0.99999


def test_without_openvino_loading_names_the_extra(
    tiny_bert_bf16: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if HAS_OPENVINO:  # the base install has no OpenVINO: there this is the real import failing
        monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingExtraError, match=r"\[openvino\] extra") as caught:
        Embedder.load(tiny_bert_bf16)
    assert caught.value.extra == "openvino"


def test_an_unknown_engine_is_refused_by_name(tiny_bert: Path, tmp_path: Path) -> None:
    artefact = tmp_path / "artefact"
    shutil.copytree(tiny_bert, artefact)
    data = json.loads((artefact / "manifest.json").read_text())
    data["recipe"]["backend"] = "tensorrt"
    (artefact / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtefactError, match=r"backend 'tensorrt' is not one this embedrt knows"):
        Embedder.load(artefact)


@pytest.mark.export
def test_export_without_openvino_fails_before_any_work(
    tiny_sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embedrt.export import ExportOptions, export_model

    monkeypatch.setitem(sys.modules, "openvino", None)
    target = tmp_path / "bf16"
    with pytest.raises(MissingExtraError, match=r"embedrt export --variant bf16 needs the \[openvino\]"):
        export_model(tiny_sources["bert"], target, ExportOptions(variant="bf16"))
    assert not target.exists()


# --- the real model --------------------------------------------------------------------------


@pytest.mark.real_model
@needs_openvino
def test_minilm_bf16_against_torch_on_stsb_dev(
    minilm_bf16: Path, stsb_dev: tuple[list[tuple[str, str]], list[float]], minilm_torch_stsb: Any,
    invariance: Invariance,
) -> None:
    from embedrt.bench.quality import spearman

    pairs, gold = stsb_dev
    texts = [text for pair in pairs for text in pair]
    reference = minilm_torch_stsb  # the same bundled model's torch vectors, computed once per session
    embedder = Embedder.load(minilm_bf16)
    vectors = embedder.embed(texts)
    cosines = row_cosines(vectors, reference)

    def spearman_x100(v: np.ndarray) -> float:
        return 100 * spearman(row_cosines(v[0::2], v[1::2]), np.array(gold))

    drop = spearman_x100(reference) - spearman_x100(vectors)
    worst = invariance(embedder, texts[:300] + [max(texts, key=len) * 6], (8, 32, 128))
    print(
        f"\n{embedder.engine} vs torch on STS-B dev ({len(texts)} sentences): min {cosines.min():.6f} "
        f"mean {cosines.mean():.7f}; Spearman drop {drop:.4f}; alone vs batches of 8/32/128: "
        f"min {worst:.7f}"
    )
    assert cosines.min() >= 0.9999 and cosines.mean() >= 0.99995  # the export gate; int8: 0.99 / 0.997
    assert abs(drop) <= 0.05
    assert worst >= 0.9999


@pytest.mark.export
def test_the_profile_refuses_an_artefact_onnxruntime_does_not_run(tiny_bert_bf16: Path) -> None:
    from embedrt.bench.profiling import ProfileOptions, run_profile
    from embedrt.runtime import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"runs on openvino; the profile reads onnxruntime"):
        run_profile(ProfileOptions(artefacts=(tiny_bert_bf16,), threads=1))


@pytest.mark.export
@pytest.mark.extras("peers")
def test_the_openvino_int8_attempts_script_measures_every_form(
    tiny_bert: Path, tiny_bert_int8: Path, tiny_bert_bf16: Path, tmp_path: Path
) -> None:
    """bench/studies/openvino_int8.py --quick on the tiny BERT: every form measured, the table written."""
    from embedrt.bench.studies import openvino_int8

    out = tmp_path / "out"
    openvino_int8.main(["--out", str(out), "--fp32", str(tiny_bert), "--int8", str(tiny_bert_int8),
                        "--bf16", str(tiny_bert_bf16), "--quick"])
    results = json.loads((out / "results.json").read_text())["results"]
    assert list(results)[:2] == ["embedrt int8 (onnxruntime)", "embedrt bf16 (OpenVINO)"]
    # the two embedrt artefacts, NNCF's four forms, and embedrt's own decisions as five QDQ forms
    qdq = [figures for name, figures in results.items() if "QDQ" in name]
    assert len(results) == 11 and len(qdq) == 5
    assert all(int(figures["int8_kernels"].split("/")[0]) > 0 for figures in qdq)  # compiled to int8
    for name, figures in results.items():
        assert -1.0 <= figures["cos_min"] <= figures["cos_mean"] <= 1.0 + 1e-6, name
        assert all(figures["speed"][bucket] > 0 for bucket in ("short", "medium", "long", "b1_p50_ms"))
    dynamic = [figures for name, figures in results.items() if "dynamic per-token" in name]
    assert len(dynamic) == 2  # scales per token: a text's vector does not depend on its batch
    assert all(figures["invariance"] >= 0.9999 for figures in dynamic)
    table = (out / "results.md").read_text()
    assert all(f"| {name} |" in table for name in results)
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]  # no weights
