"""The engines a user would pick instead of embedrt, on the same model.

- OpenVINO on embedrt's own fp32 ``model.onnx`` (it reads ONNX directly), with the ``f32`` or
  ``bf16`` inference-precision hint;
- OpenVINO int8 made by NNCF's post-training quantisation, calibrated on embedrt's calibration
  sentences one by one (unpadded: padded calibration inputs are a known trap);
- sentence-transformers' ONNX backend with its own dynamically quantised file (its
  ``avx512_vnni`` preset), made in a temporary copy of the source model folder.

OpenVINO runs behind embedrt's own :class:`~embedrt.runtime.Embedder` (same tokenisation,
length-sorted batches, padding, pooling), so only the engine differs. Files an engine needs
made first (NNCF's model, sentence-transformers' quantised ONNX) are made once by
:func:`prepare` into the run's work folder; loading them is what a cold start measures.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .systems import SystemSpec, SystemUnavailable, embed_in_length_order, runtime_tokenizers

if TYPE_CHECKING:
    from embedrt.runtime import Embedder
    from embedrt.runtime.backends import OpenVINOSession

logger = logging.getLogger(__name__)

KIND_OPENVINO = "openvino"
KIND_OPENVINO_NNCF = "openvino-nncf"
KIND_ST_ONNX = "sentence-transformers-onnx"
PRECISION_HINTS = ("f32", "bf16")
ST_QUANTIZATION = "avx512_vnni"
ST_QUANTIZED_FILE = f"onnx/model_qint8_{ST_QUANTIZATION}.onnx"
NNCF_MODEL_FILE = "model-nncf-int8.xml"
_PEERS_EXTRA = "pip install openvino nncf (the [peers] extra)"


def _openvino() -> Any:  # the openvino module (typed only partly): imported on demand
    try:
        import openvino
    except ImportError as err:
        raise SystemUnavailable(f"openvino is not installed ({_PEERS_EXTRA})") from err
    return openvino


def openvino_embedder(
    artefact: Path, model_file: Path, threads: int, hint: str, name: str,
    extra_config: dict[str, Any] | None = None,
) -> tuple[Embedder, OpenVINOSession]:
    """An Embedder over OpenVINO running ``model_file`` at precision ``hint`` (``f32``/``bf16``).

    The artefact gives the manifest and tokenizer; the session is the one embedrt's ``bf16``
    variant runs on (same settings), with ``extra_config`` OpenVINO properties on top.
    Returns ``(embedder, session)``.
    """
    from embedrt.runtime import Embedder, Manifest
    from embedrt.runtime.backends import OPENVINO_PRECISIONS, OpenVINOSession

    precision = next(name for name, short in OPENVINO_PRECISIONS.items() if short == hint)
    manifest = Manifest.load(artefact)
    session = OpenVINOSession(model_file, threads, precision, name, extra_config=extra_config)
    tokenizer, untruncated = runtime_tokenizers(artefact / "tokenizer.json", manifest.max_seq_length)
    return Embedder(manifest, session, tokenizer, untruncated, threads, 32), session


class OpenVINOSystem:
    """OpenVINO's CPU plugin on an ONNX or IR file, behind embedrt's tokenise-batch-pool path.

    ``spec.path`` is the fp32 artefact (manifest, tokenizer, ``model.onnx``); ``spec.prepared``
    an IR file to run instead (NNCF's int8); ``spec.option`` the precision hint.
    """

    def __init__(self, spec: SystemSpec) -> None:
        _openvino()  # a clear skip line when it is missing
        hint = spec.option or "f32"
        if hint not in PRECISION_HINTS:
            raise ValueError(f"OpenVINO precision hint {hint!r} is not one of {', '.join(PRECISION_HINTS)}")
        if spec.kind == KIND_OPENVINO_NNCF and not spec.prepared:
            raise SystemUnavailable("NNCF's int8 model was not made (needs a work folder: see prepare())")
        artefact = Path(spec.path)
        model_file = Path(spec.prepared) if spec.prepared else artefact / "model.onnx"
        if not model_file.is_file():
            raise SystemUnavailable(f"{model_file} is missing")
        self._embedder, session = openvino_embedder(artefact, model_file, spec.threads, hint, spec.name)
        manifest = self._embedder.manifest
        self.spec = spec
        self.metadata = {
            "variant": "int8 (NNCF)" if spec.prepared else hint,
            "inference_precision": session.precision,
            "threads": spec.threads,
            "max_seq_length": manifest.max_seq_length,
            "default_batch_size": 32,
            "model_file": str(model_file),
            "batches": "embedrt's (length-sorted, same token budget per call)",
        }

    def embed(self, texts: Sequence[str], batch_size: int | None) -> npt.NDArray[np.float32]:
        """Embed through embedrt's batching with OpenVINO running each call."""
        # the long bucket is cut at max_seq_length by design: a warning per call would flood the bar
        return self._embedder.embed(list(texts), batch_size=batch_size, warn_truncation=False)


class SentenceTransformersOnnxSystem:
    """sentence-transformers with ``backend="onnx"`` on its own ``avx512_vnni`` int8 file."""

    def __init__(self, spec: SystemSpec) -> None:
        try:
            import onnxruntime as ort
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise SystemUnavailable(
                f"{err.name or 'sentence_transformers'} is not installed (pip install 'embedrt[export]')"
            ) from err
        folder = Path(spec.prepared)
        if not (folder / ST_QUANTIZED_FILE).is_file():
            raise SystemUnavailable(f"no quantised file {folder / ST_QUANTIZED_FILE}; run prepare() first")
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec.threads
        options.inter_op_num_threads = 1
        torch.set_num_threads(spec.threads)
        self.spec = spec
        self._model = SentenceTransformer(
            str(folder), backend="onnx", device="cpu",
            model_kwargs={"file_name": ST_QUANTIZED_FILE, "provider": "CPUExecutionProvider",
                          "session_options": options},
        )
        self.metadata = {
            "variant": f"int8 ({ST_QUANTIZATION} dynamic quantisation)",
            "max_seq_length": int(self._model.max_seq_length),
            "default_batch_size": 32,
            "model_file": str(folder / ST_QUANTIZED_FILE),
            "batches": "length-sorted by the bench (as embedrt's)",
        }

    def embed(self, texts: Sequence[str], batch_size: int | None) -> npt.NDArray[np.float32]:
        """Embed with ``SentenceTransformer.encode``, one call per length-sorted batch."""

        def run(batch: list[str]) -> npt.NDArray[np.float32]:
            vectors = self._model.encode(batch, batch_size=len(batch), convert_to_numpy=True,
                                         show_progress_bar=False)
            return np.asarray(vectors, dtype=np.float32)

        return embed_in_length_order(self.spec, texts, batch_size or 32, run)


def prepare(spec: SystemSpec, workdir: Path) -> SystemSpec:
    """Make the files ``spec``'s engine needs (once per run) and return the spec pointing at them.

    Raises:
        SystemUnavailable: a package is missing or the files cannot be made.
    """
    from dataclasses import replace

    makers = {KIND_OPENVINO_NNCF: lambda: _nncf_int8(Path(spec.path), workdir / spec.name),
              KIND_ST_ONNX: lambda: _st_quantized(Path(spec.source), workdir / spec.name)}
    make = makers.get(spec.kind)
    if make is None or spec.prepared:
        return spec
    try:
        return replace(spec, prepared=str(make()))
    except SystemUnavailable:
        raise
    except Exception as err:  # third-party converters raise anything; one peer must not end the run
        raise SystemUnavailable(f"making its model failed: {type(err).__name__}: {err}") from err


def _nncf_int8(artefact: Path, folder: Path) -> Path:
    """NNCF int8 IR of the artefact's fp32 model.

    Calibrated on embedrt's calibration sentences, each tokenised alone (batch 1, no padding).
    """
    openvino = _openvino()
    try:
        import nncf
    except ImportError as err:
        raise SystemUnavailable(f"nncf is not installed ({_PEERS_EXTRA})") from err
    from embedrt.export.quantize import calibration_feeds
    from embedrt.runtime import Manifest

    manifest = Manifest.load(artefact)
    tokenized = calibration_feeds(artefact / "tokenizer.json", max_seq_length=manifest.max_seq_length)
    feeds = [{name: feed[name] for name in manifest.inputs} for feed in tokenized]
    model = openvino.Core().read_model(str(artefact / "model.onnx"))
    logger.info("NNCF: quantising %s on %d calibration sentences", artefact, len(feeds))
    quantized = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(feeds))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / NNCF_MODEL_FILE
    openvino.save_model(quantized, str(target))
    return target


def _st_quantized(source: Path, folder: Path) -> Path:
    """A copy of the source model folder holding sentence-transformers' own int8 ONNX file."""
    try:
        from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model
    except ImportError as err:
        raise SystemUnavailable(
            f"{err.name or 'sentence_transformers'} is not installed (pip install 'embedrt[export]')"
        ) from err
    if not source.is_dir():
        raise SystemUnavailable(f"source model folder {source} does not exist")
    shutil.copytree(source, folder, dirs_exist_ok=True)  # the source folder itself stays untouched
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu",
                                model_kwargs={"provider": "CPUExecutionProvider"})
    export_dynamic_quantized_onnx_model(model, ST_QUANTIZATION, str(folder))
    return folder


def model_files(spec: SystemSpec) -> list[Path]:
    """The weights files a peer runs (for the size column)."""
    if spec.kind == KIND_OPENVINO_NNCF and spec.prepared:
        xml = Path(spec.prepared)
        return [xml, xml.with_suffix(".bin")]
    if spec.kind == KIND_ST_ONNX and spec.prepared:
        return [Path(spec.prepared) / ST_QUANTIZED_FILE]
    return [Path(spec.path) / "model.onnx"]
