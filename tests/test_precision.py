"""Embedding precisions: codes identical to sentence-transformers', round trips, clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from embedrt.runtime import EmbedrtError
from embedrt.runtime.pooling import row_cosines
from embedrt.runtime.precision import (
    PRECISIONS,
    CalibrationError,
    Int8Calibration,
    PrecisionError,
    calibrate_int8,
    code_width,
    dequantize_embeddings,
    quantize_embeddings,
)

needs_st = pytest.mark.extras("export")  # compares with sentence-transformers


def _unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _st_quantize(embeddings: np.ndarray, precision: str, **kwargs: object) -> np.ndarray:
    from sentence_transformers.util.quantization import quantize_embeddings as st_quantize

    return st_quantize(embeddings, precision, **kwargs)  # type: ignore[arg-type]


@needs_st
@pytest.mark.parametrize("dim", [384, 13, 8])
def test_int8_and_ubinary_codes_equal_sentence_transformers(dim: int) -> None:
    vectors = _unit_rows(600, dim)
    vectors[:, 0] = 0.25  # a constant dimension: sentence-transformers' step-1 rule
    calibration_rows = vectors[:200]  # the rest falls partly outside the ranges: clipping
    calibration = calibrate_int8(calibration_rows)
    ours = quantize_embeddings(vectors, "int8", calibration)
    theirs = _st_quantize(vectors, "int8", calibration_embeddings=calibration_rows)
    assert ours.dtype == np.int8 and ours.shape == (600, dim)
    np.testing.assert_array_equal(ours, theirs)
    # also through sentence-transformers' `ranges` argument, and after a JSON round trip
    restored = Int8Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    np.testing.assert_array_equal(
        quantize_embeddings(vectors, "int8", restored),
        _st_quantize(vectors, "int8", ranges=restored.ranges()),
    )
    bits = quantize_embeddings(vectors, "ubinary")
    assert bits.dtype == np.uint8 and bits.shape == (600, math.ceil(dim / 8))
    np.testing.assert_array_equal(bits, _st_quantize(vectors, "ubinary"))


@needs_st
def test_codes_equal_sentence_transformers_on_real_embeddings(
    tiny_bert: Path, tiny_model_words: list[str]
) -> None:
    from embedrt.runtime import Embedder

    words = tiny_model_words
    texts = [" ".join(words[i : i + 1 + i % 7]) for i in range(len(words))] * 3
    vectors = Embedder.load(tiny_bert).embed(texts)
    calibration = calibrate_int8(vectors)
    np.testing.assert_array_equal(
        quantize_embeddings(vectors, "int8", calibration),
        _st_quantize(vectors, "int8", calibration_embeddings=vectors),
    )
    np.testing.assert_array_equal(quantize_embeddings(vectors, "ubinary"), _st_quantize(vectors, "ubinary"))


def test_float_precisions_keep_values() -> None:
    vectors = _unit_rows(20, 16)
    as32 = quantize_embeddings(vectors.astype(np.float64), "float32")
    assert as32.dtype == np.float32 and as32.flags.c_contiguous
    np.testing.assert_array_equal(as32, vectors)
    as16 = quantize_embeddings(vectors, "float16")
    assert as16.dtype == np.float16
    np.testing.assert_array_equal(dequantize_embeddings(as16, "float16"), as16.astype(np.float32))
    assert np.abs(dequantize_embeddings(as16, "float16") - vectors).max() < 1e-3


def test_int8_dequantised_within_half_a_step_and_requantises_to_the_same_codes() -> None:
    vectors = _unit_rows(500, 48, seed=1)
    calibration = calibrate_int8(vectors)
    codes = quantize_embeddings(vectors, "int8", calibration)
    restored = dequantize_embeddings(codes, "int8", calibration)
    low, high = calibration.arrays()
    step = (high - low) / 255
    assert restored.dtype == np.float32
    # bucket centres: at most half a step away (plus float32 rounding), never outside the range
    assert (np.abs(restored - vectors) <= step * 0.5 + 1e-6).all()
    assert (restored >= low).all() and (restored <= high).all()
    np.testing.assert_array_equal(quantize_embeddings(restored, "int8", calibration), codes)


def test_int8_constant_dimension_dequantises_to_its_value() -> None:
    vectors = _unit_rows(10, 4)
    vectors[:, 2] = -0.5
    calibration = calibrate_int8(vectors)
    restored = dequantize_embeddings(quantize_embeddings(vectors, "int8", calibration), "int8", calibration)
    assert (restored[:, 2] == np.float32(-0.5)).all()


@pytest.mark.parametrize("dim", [384, 13])
def test_ubinary_dequantises_to_unit_vectors_with_the_signs(dim: int) -> None:
    vectors = _unit_rows(50, dim, seed=2)
    codes = quantize_embeddings(vectors, "ubinary")
    restored = dequantize_embeddings(codes, "ubinary", dim=dim)
    assert restored.shape == (50, dim) and restored.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(restored, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(restored > 0, vectors > 0)
    np.testing.assert_array_equal(quantize_embeddings(restored, "ubinary"), codes)


def test_calibration_round_trip_and_union() -> None:
    first, second = calibrate_int8(_unit_rows(30, 8, 3)), calibrate_int8(_unit_rows(30, 8, 4))
    assert Int8Calibration.from_dict(json.loads(json.dumps(first.to_dict()))) == first
    both = first.union(second)
    assert both == calibrate_int8(np.vstack([_unit_rows(30, 8, 3), _unit_rows(30, 8, 4)]))
    assert code_width("ubinary", 13) == 2 and code_width("int8", 13) == 13


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "expected an object"),
        ({"minimum": [0.0]}, "'maximum' must be a list of numbers"),
        ({"minimum": [0.0, True], "maximum": [1.0, 1.0]}, "'minimum' must be a list of numbers"),
        ({"minimum": [0.0, 0.0], "maximum": [1.0]}, "of one length"),
        ({"minimum": [], "maximum": []}, "non-empty"),
        ({"minimum": [0.0, 2.0], "maximum": [1.0, 1.0]}, "dimension 1 has minimum 2.0 above maximum 1.0"),
        ({"minimum": [float("nan")], "maximum": [1.0]}, "finite"),
    ],
)
def test_calibration_from_bad_data_names_the_origin_and_the_problem(data: object, message: str) -> None:
    with pytest.raises(CalibrationError, match=message) as caught:
        Int8Calibration.from_dict(data, origin="run.json: int8_calibration")
    assert "run.json: int8_calibration" in str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, EmbedrtError)


def test_bad_inputs_raise_typed_errors_with_the_fix() -> None:
    vectors = _unit_rows(4, 16)
    calibration = calibrate_int8(vectors)
    cases: list[tuple[type[Exception], str, object]] = [
        (PrecisionError, "'bf16' is not one of float32, float16, int8, ubinary",
         lambda: quantize_embeddings(vectors, "bf16")),
        (CalibrationError, "needs an Int8Calibration",
         lambda: quantize_embeddings(vectors, "int8")),
        (CalibrationError, "for dimension 16, but the embeddings have dimension 8",
         lambda: quantize_embeddings(vectors[:, :8], "int8", calibration)),
        (PrecisionError, r"2-D float array.*reshape\(1, -1\)",
         lambda: quantize_embeddings(vectors[0], "float32")),
        (PrecisionError, "2-D float array", lambda: quantize_embeddings(vectors.astype(np.int8), "ubinary")),
        (PrecisionError, "NaN", lambda: quantize_embeddings(np.full((1, 4), np.nan, np.float32), "float16")),
        (PrecisionError, "float16's range",
         lambda: quantize_embeddings(np.full((1, 4), 1e6, np.float32), "float16")),
        (PrecisionError, "no rows", lambda: calibrate_int8(np.zeros((0, 4), np.float32))),
        (PrecisionError, "2-D int8 array, got 2-D float32",
         lambda: dequantize_embeddings(vectors, "int8", calibration)),
        (PrecisionError, "2 bytes cannot hold dimension 17",
         lambda: dequantize_embeddings(np.zeros((1, 2), np.uint8), "ubinary", dim=17)),
        (PrecisionError, "dimension 16, expected 8",
         lambda: dequantize_embeddings(vectors, "float32", dim=8)),
        (CalibrationError, "needs an Int8Calibration",
         lambda: dequantize_embeddings(np.zeros((1, 16), np.int8), "int8")),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message) as caught:
            call()  # type: ignore[operator]
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, EmbedrtError)


MIN_ROUND_TRIP_COSINE = {"float32": 1 - 1e-12, "float16": 0.99999, "int8": 0.9999, "ubinary": 0.7}


def test_precisions_cover_every_code_dtype() -> None:
    vectors = _unit_rows(3, 10)
    calibration = calibrate_int8(vectors)
    for precision in PRECISIONS:
        codes = quantize_embeddings(vectors, precision, calibration)
        assert codes.shape == (3, code_width(precision, 10))
        restored = dequantize_embeddings(codes, precision, calibration, dim=10)
        assert restored.shape == (3, 10) and restored.dtype == np.float32
        # each row keeps its direction as far as its code can (ubinary keeps only the signs)
        assert row_cosines(restored, vectors).min() >= MIN_ROUND_TRIP_COSINE[precision], precision
    np.testing.assert_array_equal(
        dequantize_embeddings(quantize_embeddings(vectors, "float32"), "float32", dim=10), vectors
    )
