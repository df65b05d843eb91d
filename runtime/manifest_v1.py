"""Schema version 1 of ``manifest.json`` (embedrt before the typed manifest), converted on load."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .manifest_records import SCHEMA_VERSION


def upgrade_v1(d: Mapping[str, Any]) -> dict[str, Any]:  # v1 JSON: checked after conversion
    """A schema-version-1 manifest in the current layout.

    Version 1 kept ``parity`` as ``{}`` when unchecked and a quantised recipe as
    ``{"method", "recipe": {settings}, <counts>, "requires_cpu_flags", "built_on", ...}``.
    """
    data = dict(d)
    data["schema_version"] = SCHEMA_VERSION
    if data.get("parity") == {}:
        data["parity"] = None
    recipe = dict(data.get("recipe", {}))
    settings = recipe.pop("recipe", None)
    if settings is not None:
        quantisation = {
            key: settings[key]
            for key in ("target_isa", "layout", "matmul_op", "weight_type", "activation_granularity")
        }
        for key in (
            "quantised_matmuls",
            "quantised_matmul_nodes",
            "quantised_gathers",
            "fp32_matmuls",
            "folded_shape_tensors",
            "graph_nodes",
            "ort_ops",
            "size_bytes",
            "calibration_sentences",
            "built_on",
            "accuracy_search",
        ):
            if key in recipe:
                quantisation[key] = recipe.pop(key)
        quantisation["settings"] = settings
        recipe = {
            "method": recipe["method"],
            "requires_cpu_flags": recipe.get("requires_cpu_flags", []),
            "quantisation": quantisation,
        }
    data["recipe"] = recipe
    return data
