"""``export_model``: source model folder -> checked artefact directory."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from embedrt.export.errors import OutputDirectoryError
from embedrt.export.optimise import optimise
from embedrt.export.options import ExportOptions
from embedrt.export.parity import compare, reference_embeddings, validation_sentences
from embedrt.export.source import SourceModel, check_catalogue, read_source, resolve_source
from embedrt.export.stages import dense_stages, write_dense_weights
from embedrt.export.variants import BUILD_BF16, BUILD_OPTIMISED, BUILD_QUANTISED, Variant, get_variant
from embedrt.runtime.backends import OPENVINO, import_openvino
from embedrt.runtime.errors import EmbedrtError, MissingExtraError, ParityError
from embedrt.runtime.home import artefact_dir
from embedrt.runtime.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    ArtefactRecipe,
    Manifest,
    ParityReport,
    SourceRecord,
    sha256_file,
)

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str], None]
VERSIONED_PACKAGES = (
    "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
    "sentence-transformers", "tokenizers",
)
OUTPUT_NAME = "last_hidden_state"
EXPORTED_RECIPE = ArtefactRecipe(method="optimum ONNX export, task feature-extraction", dtype="float32")
BF16_RECIPE = ArtefactRecipe(
    method="optimum ONNX export, task feature-extraction; run by OpenVINO's CPU plugin with "
    "INFERENCE_PRECISION_HINT=bf16",
    dtype="bfloat16",
    backend=OPENVINO,
)


def default_out_dir(model_name: str, variant: str) -> Path:
    """``<home>/models/<model-name>/<variant>/``, where the runtime's defaults look."""
    path: Path = artefact_dir(model_name, variant)
    return path


def export_model(
    source: str | Path | None = None,
    out_dir: str | Path | None = None,
    options: ExportOptions | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Export a sentence-transformers model to an artefact directory and check it.

    Args:
        source: a catalogue name, a local sentence-transformers folder, or None for the
            bundled default (all-MiniLM-L6-v2).
        out_dir: where to write; default :func:`default_out_dir`.
        options: variant and checks; see :class:`ExportOptions`.
        progress: called with a short description as each step starts.

    Returns:
        The manifest written, with the parity figures measured.

    Raises:
        SourceModelError: the source cannot be reproduced faithfully (names the stage).
        CatalogueMismatchError: a catalogue model's folder disagrees with its entry.
        MissingExtraError: the [export] extra is not installed, or the variant's engine
            (OpenVINO for ``bf16``: the [openvino] extra).
        QuantizationError: a quantised variant cannot be built (e.g. AccuracyTargetError).
        ParityError: the artefact disagrees with torch beyond the variant's tolerance;
            nothing is written then.
        OutputDirectoryError: ``out_dir`` holds something that is not an artefact.
    """
    options = options or ExportOptions()
    step = progress or (lambda message: logger.info("%s", message))
    variant = get_variant(options.variant)
    _check_backend(variant)
    step("reading the source model")
    folder, name = resolve_source(source)
    model = read_source(folder, name)
    check_catalogue(model, source)
    target = Path(out_dir) if out_dir is not None else default_out_dir(model.name, variant.name)
    _check_writable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _staging_dir(target) as staging:
        step(f"exporting {model.name} to ONNX")
        inputs = _export_onnx(model, staging, options.opset)
        write_dense_weights(model, staging)
        # The fp32 manifest first: quantisation's accuracy search loads trial artefacts.
        _write_manifest(model, variant, staging, inputs, EXPORTED_RECIPE)
        recipe = _build_variant(variant, staging, model, options, step)
        manifest = _write_manifest(model, variant, staging, inputs, recipe)
        if options.check:
            step("checking parity against sentence-transformers on torch")
            # --min-cosine raises the gate: an artefact the accuracy search kept for a target
            # must also meet that target on the gate's sentences.
            gate = max(variant.min_cosine, options.min_cosine or 0.0)
            report = check_parity(model, staging, variant, options.threads, min_cosine=gate)
            manifest = _write_manifest(model, variant, staging, inputs, recipe, report)
            if not report.passed:
                raise ParityError(
                    f"{variant.name} export of {model.name} disagrees with torch: "
                    f"{report.summary()}"
                )
        step(f"writing {target}")
        _replace_dir(staging, target)
    return manifest


def check_parity(
    model: SourceModel,
    artefact: Path,
    variant: Variant,
    threads: int | None = None,
    min_cosine: float | None = None,
) -> ParityReport:
    """Embed the validation sentences with torch and with the artefact, and compare.

    ``min_cosine`` (default: the variant's tolerance) is the gate's per-sentence threshold.

    Raises:
        MissingExtraError: sentence-transformers is not installed.
        ArtefactError: the artefact cannot be loaded.
    """
    from embedrt.runtime.embedder import Embedder

    sentences = validation_sentences()
    reference = reference_embeddings(model.path, sentences)
    with _quiet("embedrt.runtime"):  # the set truncates on purpose: no need to say so
        embedder = Embedder.load(artefact, threads=threads)
        candidate = embedder.embed(sentences)
    if variant.backend == OPENVINO and embedder.engine != f"{OPENVINO} bf16":
        logger.warning(
            "parity of %s was checked on %s: this CPU cannot run OpenVINO in bf16, so the gate "
            "saw float32 results; check the artefact again on the CPU that will serve it",
            artefact.name, embedder.engine,
        )
    threshold = variant.min_cosine if min_cosine is None else min_cosine
    return compare(reference, candidate, threshold, variant.max_abs_diff)


def _build_variant(
    variant: Variant,
    staging: Path,
    model: SourceModel,
    options: ExportOptions,
    step: ProgressCallback,
) -> ArtefactRecipe:
    """Turn the exported fp32 graph in ``staging`` into ``variant``; return its recipe."""
    model_path = staging / MODEL_FILE
    if variant.build == BUILD_OPTIMISED:
        step("applying onnxruntime transformer fusions")
        return optimise(model_path, model_path)
    if variant.build == BUILD_QUANTISED:
        from embedrt.export.quantize.variant import quantise_variant

        with _quiet("embedrt.runtime", "onnxruntime"):
            return quantise_variant(variant.name, staging, model.path, options, step)
    if variant.build == BUILD_BF16:
        return BF16_RECIPE
    return EXPORTED_RECIPE


def _check_backend(variant: Variant) -> None:
    """Fail before any work when the variant's engine is not installed (parity runs on it)."""
    if variant.backend == OPENVINO:
        import_openvino(f"embedrt export --variant {variant.name}")


def _export_onnx(model: SourceModel, staging: Path, opset: int | None) -> tuple[str, ...]:
    """Export the Transformer stage with optimum; return the graph's input names."""
    try:
        import onnxruntime as ort
        from optimum.exporters.onnx import main_export
    except ImportError as err:
        raise MissingExtraError("export", "embedrt export", err.name or "optimum") from err
    with tempfile.TemporaryDirectory(prefix="embedrt-optimum-") as scratch, _quiet(
        "optimum", "transformers", "torch"
    ):
        main_export(
            str(model.transformer_path),
            output=scratch,
            task="feature-extraction",
            library_name="transformers",
            opset=opset,
            do_validation=False,  # export checks parity itself, on pooled outputs
            device="cpu",
        )
        shutil.move(Path(scratch) / MODEL_FILE, staging / MODEL_FILE)
        _copy_tokenizer(model, Path(scratch), staging)
    session = ort.InferenceSession(str(staging / MODEL_FILE), providers=["CPUExecutionProvider"])
    return tuple(i.name for i in session.get_inputs())


def _copy_tokenizer(model: SourceModel, exported: Path, staging: Path) -> None:
    """Prefer the source's own tokenizer.json; else the one the exporter converted."""
    for candidate in (model.transformer_path / TOKENIZER_FILE, exported / TOKENIZER_FILE):
        if candidate.is_file():
            shutil.copyfile(candidate, staging / TOKENIZER_FILE)
            return
    raise EmbedrtError(f"{model.path}: no fast tokenizer (tokenizer.json) could be produced")


def _write_manifest(
    model: SourceModel,
    variant: Variant,
    staging: Path,
    inputs: tuple[str, ...],
    recipe: ArtefactRecipe,
    report: ParityReport | None = None,
) -> Manifest:
    manifest = Manifest(
        model_name=model.name,
        source=SourceRecord(
            path=str(model.path),
            weights_file=model.weights_file.name,
            weights_sha256=sha256_file(model.weights_file),
        ),
        dim=model.dim,
        pooling=model.pooling,
        normalize=model.normalize,
        max_seq_length=model.max_seq_length,
        inputs=inputs,
        output=OUTPUT_NAME,
        pad_token_id=_pad_token_id(staging / TOKENIZER_FILE, model.transformer_path),
        variant=variant.name,
        recipe=recipe,
        files={
            name: sha256_file(staging / name)
            for name in (MODEL_FILE, TOKENIZER_FILE, *(stage.file for stage in dense_stages(model)))
        },
        versions=_versions(),
        parity=report,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        prompts=model.prompts,
        default_prompt_name=model.default_prompt_name,
        dense=dense_stages(model),
    )
    manifest.save(staging)
    return manifest


def _pad_token_id(tokenizer_file: Path, transformer_path: Path) -> int:
    """The id the runtime pads with: the first of these that names one.

    tokenizer.json's padding settings, the pad token of tokenizer_config.json, config.json's
    ``pad_token_id``, a token spelt like a pad token ([PAD], <pad>, <PAD>), else 0 (with a
    log line). Padding goes on the right and is masked out, so for the encoders embedrt
    exports any id in the vocabulary gives the same vectors (a test checks); the model's own
    pad id is still preferred, as positions in RoBERTa-style models are counted from it.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    tokenizer_config = _json_object(transformer_path / "tokenizer_config.json")
    pad = tokenizer_config.get("pad_token")
    named = tokenizer.token_to_id(pad.get("content") if isinstance(pad, dict) else str(pad))
    if pad is not None and named is not None:
        return int(named)
    config_id = _json_object(transformer_path / "config.json").get("pad_token_id")
    if isinstance(config_id, int) and 0 <= config_id < tokenizer.get_vocab_size(with_added_tokens=True):
        return config_id
    for token in ("[PAD]", "<pad>", "<PAD>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    logger.info("%s names no pad token; padding with id 0 (padded positions are masked out)",
                tokenizer_file)
    return 0


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON file's top-level object; empty when the file is missing or not an object."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def _check_writable(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise OutputDirectoryError(f"{target}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_FILE).is_file():
        raise OutputDirectoryError(
            f"{target}: exists, is not empty and is not an embedrt artefact; "
            "choose another --out or empty it first"
        )


@contextlib.contextmanager
def _quiet(*logger_names: str) -> Iterator[None]:
    """Hide other libraries' warnings (tracer notes, deprecations) during a step we check."""
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [log.level for log in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for log in loggers:
            log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for log, level in zip(loggers, levels, strict=True):
                log.setLevel(level)


@contextlib.contextmanager
def _staging_dir(target: Path) -> Iterator[Path]:
    """A scratch directory beside ``target``, removed unless moved into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; an artefact is an ordinary dir
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_dir(staging: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    staging.mkdir()  # so the staging context's cleanup finds something to remove
