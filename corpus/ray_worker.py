"""What runs inside a Ray actor: the job's parts, loaded once, and one unit per call.

Each actor holds one :class:`EmbeddingStep` and one :class:`ShardWriter` and runs
:func:`~.work.process_unit` per unit. No Ray import here: Ray only calls this class.

Ray Data builds :class:`UnitWorker` once per actor (the artefact is loaded there, once) and
calls it with batches of one pickled :class:`~.work.UnitTask`. It answers with a row per
unit: the finished unit's record, or the error that stopped it. Errors travel as data
because Ray wraps an actor's exception in its own types (``RayTaskError(UserCodeException)``)
that hide the original; the driver re-raises the embedrt error itself, so the command line
prints its one line.
"""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path
from typing import Any

from embedrt.runtime.errors import ArtefactNotFoundError, EmbedrtError
from embedrt.runtime.precision import Int8Calibration

from .embedding import EmbeddingStep
from .errors import CorpusError
from .work import UnitTask, process_unit
from .writer import FinishedUnit, ShardWriter

TASK_COLUMN = "task"
UNIT_COLUMN = "unit"
FINISHED_COLUMN = "finished"
ERROR_COLUMN = "error"


class UnitWorker:
    """A Ray Data actor: loads the artefact once, then reads, embeds and writes units.

    Args:
        model: the artefact directory, at this path on the actor's node.
        out_dir: the run's output directory, at this path on the actor's node.
        precision: the run's precision.
        calibration: int8 ranges as :meth:`Int8Calibration.to_dict` gives them, or None.
        batch_size: texts per batch.
        threads: onnxruntime threads (the CPUs Ray reserves for the actor).
        width: values per stored embedding.

    A failure to load is not raised here (Ray would retry the actor and then report its own
    error): it is kept and returned for every unit, naming the node.
    """

    def __init__(
        self, model: str, out_dir: str, precision: str, calibration: dict[str, Any] | None,
        batch_size: int, threads: int, width: int,
    ) -> None:
        self._failure: EmbedrtError | None = None
        try:
            ranges = (Int8Calibration.from_dict(calibration, "the driver's calibration")
                      if calibration is not None else None)
            self._step = EmbeddingStep.load(model, precision, ranges, batch_size, threads)
            self._writer = ShardWriter(Path(out_dir), precision, width)
            if self._step.width != width:
                raise CorpusError(f"node {socket.gethostname()}: the artefact at {model} gives "
                                  f"{self._step.width} values per embedding, the driver expects {width}")
        except ArtefactNotFoundError as err:
            self._failure = ArtefactNotFoundError(
                f"on Ray node {socket.gethostname()}: {err}. With more than one node, the artefact "
                "must be at the same path on every node (a shared filesystem, or a copy per node)"
            )
        except EmbedrtError as err:
            self._failure = err
        except OSError as err:  # the output directory cannot be created on this node
            self._failure = CorpusError(
                f"on Ray node {socket.gethostname()}: cannot prepare the output directory {out_dir} "
                f"({err}). With more than one node, it must be a shared filesystem path that every "
                "node can write"
            )

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:  # Ray Data's column batch
        """Process each pickled task of ``batch``; one output row per task."""
        out: dict[str, list[Any]] = {UNIT_COLUMN: [], FINISHED_COLUMN: [], ERROR_COLUMN: []}
        for blob in batch[TASK_COLUMN]:
            task: UnitTask = pickle.loads(bytes(blob))  # written by the driver, see ray_engine
            finished, error = self._process(task)
            out[UNIT_COLUMN].append(task.unit.name)
            out[FINISHED_COLUMN].append(json.dumps(finished.to_dict()) if finished else "")
            out[ERROR_COLUMN].append(error)
        return out

    def _process(self, task: UnitTask) -> tuple[FinishedUnit | None, bytes]:
        if self._failure is not None:
            return None, encode_error(self._failure)
        try:
            return process_unit(task, self._step, self._writer), b""
        except EmbedrtError as err:
            return None, encode_error(err)
        except OSError as err:  # a full disk, an input that vanished: a message, not a traceback
            return None, encode_error(CorpusError(
                f"on Ray node {socket.gethostname()}, unit {task.unit.name} ({task.source.label}): {err}"
            ))


def encode_error(err: EmbedrtError) -> bytes:
    """``err`` pickled; a :class:`CorpusError` with its message if it cannot be unpickled."""
    try:
        blob = pickle.dumps(err)
        pickle.loads(blob)  # some errors take other constructor arguments than their message
        return blob
    except Exception:  # any pickling failure: fall back to the message, which is what matters
        return pickle.dumps(CorpusError(f"{type(err).__name__}: {err}"))


def decode_error(blob: bytes) -> EmbedrtError:
    """The error :func:`encode_error` packed (the blob comes from this job's own actors)."""
    err = pickle.loads(blob)
    if not isinstance(err, EmbedrtError):
        return CorpusError(f"a Ray actor reported {err!r}")
    return err
