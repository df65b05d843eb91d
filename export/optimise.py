"""The fp32-optimised variant: onnxruntime's transformer fusions, applied once at export."""

from __future__ import annotations

from pathlib import Path

from embedrt.runtime.errors import MissingExtraError
from embedrt.runtime.manifest import ArtefactRecipe


def optimise(model_path: Path, out_path: Path) -> ArtefactRecipe:
    """Fuse attention, embedding+LayerNorm, skip+LayerNorm and bias+GELU; return the recipe.

    Numerics stay float32; the fused kernels reorder sums, so results differ from the
    unfused graph by rounding only (checked against the variant's tolerance at export).

    Raises:
        MissingExtraError: onnxruntime's transformer tools (they need onnx) are missing.
    """
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as err:
        raise MissingExtraError("export", "the fp32-optimised variant", err.name or "onnx") from err
    # num_heads/hidden_size 0: read from the graph, so any BERT-like width works.
    model = optimize_model(
        str(model_path), model_type="bert", num_heads=0, hidden_size=0, opt_level=1, use_gpu=False
    )
    fused = {str(op): int(count) for op, count in model.get_fused_operator_statistics().items() if count}
    model.save_model_to_file(str(out_path))
    return ArtefactRecipe(
        method="onnxruntime.transformers optimizer (model_type bert, opt_level 1)",
        dtype="float32",
        fused_ops=fused,
    )
