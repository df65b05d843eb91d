"""The stages after pooling, written into the artefact: Dense weights as ``.npz`` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from embedrt.export.source import DenseSource, SourceModel
from embedrt.runtime.errors import MissingExtraError, SourceModelError
from embedrt.runtime.manifest import MANIFEST_FILE, TOKENIZER_FILE, DenseStage, Manifest
from embedrt.runtime.stages import BIAS_KEY, WEIGHT_KEY

# sentence-transformers' Dense keeps an nn.Linear named "linear".
LINEAR_WEIGHT, LINEAR_BIAS = "linear.weight", "linear.bias"


def dense_stages(model: SourceModel) -> tuple[DenseStage, ...]:
    """The manifest's records of ``model``'s Dense stages (files ``dense_<i>.npz``)."""
    return tuple(
        DenseStage(
            file=f"dense_{i}.npz",
            in_features=stage.in_features,
            out_features=stage.out_features,
            bias=stage.bias,
            activation=stage.activation,
        )
        for i, stage in enumerate(model.dense)
    )


def write_dense_weights(model: SourceModel, directory: Path) -> tuple[DenseStage, ...]:
    """Write each Dense stage's weights (float32) into ``directory``; return the records.

    Raises:
        MissingExtraError: torch or safetensors is not installed.
        SourceModelError: a weights file lacks the layer's tensors or has other shapes.
    """
    records = dense_stages(model)
    for stage, record in zip(model.dense, records, strict=True):
        state = _load_state(stage.weights_file)
        arrays = {WEIGHT_KEY: _tensor(state, stage, LINEAR_WEIGHT, (stage.out_features, stage.in_features))}
        if stage.bias:
            arrays[BIAS_KEY] = _tensor(state, stage, LINEAR_BIAS, (stage.out_features,))
        with open(directory / record.file, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stubs take the arrays as Any
    return records


def _tensor(
    weights: dict[str, npt.NDArray[np.float32]], stage: DenseSource, key: str, shape: tuple[int, ...]
) -> npt.NDArray[np.float32]:
    if key not in weights or tuple(weights[key].shape) != shape:
        found = None if key not in weights else tuple(weights[key].shape)
        raise SourceModelError(
            f"{stage.weights_file}: Dense tensor {key!r} should have shape {shape} (from its "
            f"config.json), found {found}"
        )
    return np.ascontiguousarray(weights[key], dtype=np.float32)


def _load_state(path: Path) -> dict[str, npt.NDArray[np.float32]]:
    """A weights file's tensors as float32 arrays (safetensors, or torch's pickle format)."""
    try:
        import torch
        from safetensors.torch import load_file
    except ImportError as err:
        raise MissingExtraError("export", "exporting a Dense stage", err.name or "torch") from err
    if path.suffix == ".safetensors":
        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {name: tensor.detach().float().numpy() for name, tensor in state.items()}


def companion_files(directory: Path) -> tuple[str, ...]:
    """What a trial artefact in another folder needs from ``directory`` besides its graph.

    The tokenizer, the manifest and the Dense weights files the manifest lists: copied beside
    a trial graph, they make an artefact the runtime loads (and embeds with every stage).

    Raises:
        ArtefactError: ``directory``'s manifest is invalid.
    """
    dense = Manifest.load(directory).dense
    return (TOKENIZER_FILE, MANIFEST_FILE, *(stage.file for stage in dense))
