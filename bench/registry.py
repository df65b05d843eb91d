"""Every kind of system the bench can build, and building them from their specs.

The adapters live beside the protocol (:mod:`.systems`: embedrt, sentence-transformers on
torch, fastembed) and with the engines a user would pick instead (:mod:`.peers`); this module
only maps a :class:`~.systems.SystemSpec`'s ``kind`` to its adapter, makes the files a peer
needs first, and keeps the systems that cannot run here as skipped, with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from .peers import (
    KIND_OPENVINO,
    KIND_OPENVINO_NNCF,
    KIND_ST_ONNX,
    OpenVINOSystem,
    SentenceTransformersOnnxSystem,
    prepare,
)
from .systems import (
    KIND_EMBEDRT,
    KIND_FASTEMBED,
    KIND_TORCH,
    EmbedrtSystem,
    FastembedSystem,
    SentenceTransformersSystem,
    System,
    SystemSpec,
    SystemStatus,
    SystemUnavailable,
)

logger = logging.getLogger(__name__)

ADAPTERS: dict[str, Callable[[SystemSpec], System]] = {
    KIND_EMBEDRT: EmbedrtSystem,
    KIND_TORCH: SentenceTransformersSystem,
    KIND_FASTEMBED: FastembedSystem,
    KIND_OPENVINO: OpenVINOSystem,
    KIND_OPENVINO_NNCF: OpenVINOSystem,
    KIND_ST_ONNX: SentenceTransformersOnnxSystem,
}


def build_system(spec: SystemSpec) -> System:
    """Load the system ``spec`` describes.

    Raises:
        SystemUnavailable: its library is not installed or its files are missing.
        ValueError: ``spec.kind`` is unknown.
    """
    adapter = ADAPTERS.get(spec.kind)
    if adapter is None:
        raise ValueError(f"unknown system kind {spec.kind!r}; expected one of {', '.join(ADAPTERS)}")
    return adapter(spec)


def load_systems(
    specs: Sequence[SystemSpec], skip: Sequence[str] = (), workdir: Path | None = None
) -> tuple[list[System], list[SystemStatus]]:
    """Build every spec; those skipped by kind or name, or that cannot run here, are kept as skipped.

    Files a peer needs made first go under ``workdir``, which must outlive the systems
    (without one, those peers are skipped). A skipped system's status holds the reason.
    """
    loaded: list[System] = []
    statuses: list[SystemStatus] = []
    for spec in specs:
        if spec.kind in skip or spec.name in skip:
            statuses.append(SystemStatus(spec, "skipped", "excluded with --skip"))
            continue
        try:
            if workdir is not None:
                spec = prepare(spec, workdir)
            system = build_system(spec)
        except SystemUnavailable as err:
            logger.warning("skipping %s: %s", spec.name, err)
            statuses.append(SystemStatus(spec, "skipped", str(err)))
            continue
        loaded.append(system)
        statuses.append(SystemStatus(spec, "ok", metadata=dict(system.metadata)))
    return loaded, statuses
