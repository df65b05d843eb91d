"""Session fixtures for the reranker tests: tiny cross-encoders and the trained MiniLM one.

* ``tiny_cross_encoders``: CrossEncoder folders built from the tiny models of
  ``_tiny_models`` (random weights, random classification head): BERT with one logit and a
  sigmoid, BERT with three logits (identity), XLM-RoBERTa and ModernBERT with one logit.
* ``stsb_cross_encoder``: all-MiniLM-L6-v2 fine-tuned on one half of the shipped STS-B dev
  pairs (``embedrt.export.cross_encoder.train_stsb_cross_encoder``; the other half is held
  out for measuring). Trained once per session (about a minute on 2 idle CPUs), under
  ``$EMBEDRT_TEST_ARTEFACTS`` when set, reused there when its marker file exists.
* ``reranker_artefact(name, variant)``: a tiny or the trained cross-encoder exported once.

Test modules import the fixtures by name (conftest registers this module as ``_reranker_fixtures``;
pytest finds fixtures through the test module's globals).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
STSB_DEV = REPO / "bench" / "data" / "stsb-dev" / "dev.tsv"
HAS_EXPORT = all(
    importlib.util.find_spec(name) is not None
    for name in ("torch", "transformers", "optimum", "sentence_transformers")
)
# name -> (tiny architecture, labels, activation)
TINY_CROSS_ENCODERS = {
    "bert": ("bert", 1, "sigmoid"),
    "bert-3": ("bert", 3, "identity"),
    "xlm-roberta": ("xlm-roberta", 1, "sigmoid"),
    "modernbert": ("modernbert", 1, "sigmoid"),
}


def build_tiny_cross_encoder(tiny_models: ModuleType, root: Path, name: str) -> Path:
    """A CrossEncoder folder of a tiny architecture with a random head (seeded)."""
    import torch
    from sentence_transformers import CrossEncoder

    arch, labels, activation = TINY_CROSS_ENCODERS[name]
    work = root / f"work-{name}"
    tiny_models.build(work, arch)  # writes work/hf-<arch>: a transformers model and tokenizer
    torch.manual_seed(100 + len(name))
    fn = torch.nn.Sigmoid() if activation == "sigmoid" else torch.nn.Identity()
    model = CrossEncoder(
        str(work / f"hf-{arch}"),
        num_labels=labels,
        max_length=tiny_models.MAX_SEQ_LENGTH,
        activation_fn=fn,
        device="cpu",
    )
    with torch.no_grad():  # a head whose logits spread (the default init leaves them near 0)
        for parameter in model.model.parameters():
            if parameter.dim() == 2 and parameter.shape[0] == labels:
                parameter.normal_(0.0, 1.0)
    target = root / f"ce-{name}"
    model.save(str(target))
    return target


@pytest.fixture(scope="session")
def tiny_cross_encoders(tmp_path_factory: pytest.TempPathFactory, tiny_models: ModuleType) -> dict[str, Path]:
    """CrossEncoder folders of the tiny architectures, by name (see :data:`TINY_CROSS_ENCODERS`)."""
    if not HAS_EXPORT:
        pytest.skip("building tiny cross-encoders needs the [export] extra")
    root = tmp_path_factory.mktemp("tiny-cross-encoders")
    return {name: build_tiny_cross_encoder(tiny_models, root, name) for name in TINY_CROSS_ENCODERS}


@pytest.fixture(scope="session")
def stsb_cross_encoder(artefact_root: Path) -> Path:
    """all-MiniLM-L6-v2 trained as a cross-encoder on half the STS-B dev pairs (cached per session)."""
    from embedrt.export.rerank_train import trained_with_current_settings

    target = artefact_root / "stsb-cross-encoder"
    if os.environ.get("EMBEDRT_TEST_ARTEFACTS") and trained_with_current_settings(target):
        return target  # trained by an earlier session into the shared folder: same settings, same model
    if not HAS_EXPORT:
        pytest.skip("training the cross-encoder needs the [export] extra")
    from embedrt.export.cross_encoder import train_stsb_cross_encoder

    return train_stsb_cross_encoder(target, STSB_DEV)


@pytest.fixture(scope="session")
def reranker_artefact(request: pytest.FixtureRequest, artefact_root: Path) -> Callable[[str, str], Path]:
    """``reranker_artefact(name, variant)``: ``name`` a tiny cross-encoder or ``stsb``, exported once."""
    built: dict[tuple[str, str], Path] = {}

    def export(name: str, variant: str) -> Path:
        if (name, variant) in built:
            return built[(name, variant)]
        target = artefact_root / f"reranker-{name}-{variant}"
        if not HAS_EXPORT:
            if (target / "manifest.json").is_file():
                return target
            pytest.skip(f"{target} is missing and the [export] extra is not installed")
        from embedrt.export import ExportOptions
        from embedrt.export.cross_encoder import export_cross_encoder

        source = (
            request.getfixturevalue("stsb_cross_encoder")
            if name == "stsb"
            else request.getfixturevalue("tiny_cross_encoders")[name]
        )
        export_cross_encoder(source, target, ExportOptions(variant=variant))
        built[(name, variant)] = target
        return target

    return export
