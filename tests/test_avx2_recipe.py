"""The AVX2 int8 recipes: u8 weights, and reduced-range s8 weights that cannot saturate.

Without an int8 dot product (VNNI), onnxruntime's u8 x s8 kernel (``vpmaddubsw``) adds pairs
of u8 activation x s8 weight products in 16 bits. 7-bit weights keep every pair sum within
int16 (2 x 255 x 63 = 32130 <= 32767). Their fidelity under emulated AVX2 is measured by
tests/avx2/fidelity.py; here they are checked natively on a tiny model.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx") is None:
    pytest.skip("the int8 recipes need the [export] extra", allow_module_level=True)

from _helpers import MIXED
from embedrt.export.errors import UnknownVariantError
from embedrt.export.quantize import recipe as recipes

INT16_MAX = 32767
U8_MAX = 255


def _targets(found: list[recipes.Recipe]) -> list[tuple[str, str, int]]:
    return [(r.target_isa, r.weight_type, r.weight_bits) for r in found]


def test_candidates_without_a_dot_product_are_both_avx2_recipes() -> None:
    avx2 = {"sse4_2", "avx", "avx2", "fma"}
    assert _targets(recipes.candidate_recipes("int8", avx2)) == [("avx2", "u8", 8), ("avx2_reduced", "s8", 7)]
    # AVX-512 without VNNI: its u8 x s8 kernel pairs products in 16 bits too.
    no_vnni = avx2 | {"avx512f", "avx512bw"}
    assert _targets(recipes.candidate_recipes("int8", no_vnni)) == [
        ("avx512", "u8", 8), ("avx2_reduced", "s8", 7),
    ]


def test_candidates_with_a_dot_product_or_on_arm_are_the_s8_recipe() -> None:
    vnni = {"avx2", "avx512f", "avx512bw", "avx512_vnni"}
    assert _targets(recipes.candidate_recipes("int8", vnni)) == [("avx512_vnni", "s8", 8)]
    assert _targets(recipes.candidate_recipes("int8", {"avx2", "avx_vnni"})) == [("avx_vnni", "s8", 8)]
    arm = {"fp", "asimd", "asimddp"}
    assert _targets(recipes.candidate_recipes("int8", arm)) == [("avx512_vnni", "s8", 8)]
    # Unreadable flags: the oldest target only; int4-edge has no reduced-range form.
    assert _targets(recipes.candidate_recipes("int8", set())) == [("avx2", "u8", 8)]
    assert [r.target_isa for r in recipes.candidate_recipes("int4-edge", {"avx2"})] == ["avx2"]
    with pytest.raises(UnknownVariantError, match=r"variant 'fp32' is not a quantised variant"):
        recipes.candidate_recipes("fp32", {"avx2"})


def test_reduced_range_is_chosen_by_name_never_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recipes, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(recipes, "is_arm", lambda: False)
    assert recipes.detect_isa() == "avx2"
    assert recipes.recipe_for("int8").weight_type == "u8"
    reduced = recipes.recipe_for("int8", "avx2_reduced")
    assert (reduced.weight_type, reduced.weight_bits) == ("s8", 7)
    assert recipes.required_cpu_flags("avx2_reduced") == ("avx2",)
    # The pair-sum bound that makes it safe on the 16-bit kernel.
    assert 2 * U8_MAX * (2 ** (reduced.weight_bits - 1) - 1) <= INT16_MAX


def _int8_weights(model_file: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_file)).graph
    initialisers = {i.name: i for i in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type in ("MatMulIntegerToFloat", "MatMulInteger", "QAttention"):
            assert node.input[1] in initialisers, f"{node.name}: weights are not a constant"
            found.append(numpy_helper.to_array(initialisers[node.input[1]]))
    return found


@pytest.mark.export
def test_reduced_range_export_keeps_weights_in_7_bits_and_the_int8_gate(
    tiny_sources: dict[str, Path],
    tiny_bert: Path,
    tmp_path: Path,
    invariance: Callable[[Any, list[str], tuple[int, ...]], float],
) -> None:
    from embedrt.export import ExportOptions, export_model
    from embedrt.runtime import Embedder
    from embedrt.runtime.pooling import row_cosines

    target = tmp_path / "avx2-reduced"
    manifest = export_model(tiny_sources["bert"], target, ExportOptions("int8", isa="avx2_reduced"))
    record = manifest.recipe.quantisation
    assert record is not None and manifest.parity is not None and manifest.parity.passed
    weight_form = (record.target_isa, record.weight_type, record.settings["weight_bits"])
    assert weight_form == ("avx2_reduced", "s8", 7)
    assert manifest.recipe.requires_cpu_flags == ("avx2",)

    weights = _int8_weights(target / "model.onnx")
    assert len(weights) == record.quantised_matmul_nodes > 0
    for codes in weights:
        assert codes.dtype == np.int8
        assert int(np.abs(codes.astype(np.int16)).max()) == 63  # 7 bits used, and no more
    assert 2 * U8_MAX * max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= INT16_MAX

    int8, fp32 = Embedder.load(target, threads=1), Embedder.load(tiny_bert, threads=1)
    cosines = row_cosines(int8.embed(MIXED), fp32.embed(MIXED))
    assert cosines.min() >= 0.99  # the int8 variant's parity tolerance, here against the fp32 graph
    assert invariance(int8, MIXED, (8, 32)) >= 0.99999
