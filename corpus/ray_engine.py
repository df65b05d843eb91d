"""The Ray Data engine: the job's units spread over a Ray cluster's actors (``engine="ray"``).

The driver (this process) plans the units, as the local engine does; Ray Data then runs
``from_items(units) -> map_batches(UnitWorker, one unit per call)`` on an actor pool sized by
``actors`` x ``cpus_per_actor``. Each actor loads the artefact once and, per unit, reads its
rows with the job's reader, embeds them with the job's embedding step and writes the shard
atomically with the job's writer (:func:`~.work.process_unit`, the same parts and chunks as
the local engine, so a unit's shard holds the same ids and vectors under either engine). The
driver records each finished unit in ``run.json`` as its result comes back; resume skips the
units recorded there, whichever engine wrote them.

Why not ``ray.data.read_json`` / ``read_parquet`` and ``Dataset.write_parquet``: Ray's blocks
depend on file sizes, parallelism and block-size settings, carry no row numbers (embedrt's
default ids are ``<file>:<row>``), and ``write_parquet`` names files by a per-write id and
writes them in place. A killed run would leave shards that cannot be told whole from partial,
nor mapped back to rows, so resume would mean starting again. Units planned by the driver have
fixed rows and names in every run, so resume is "skip the recorded units" and the output is
byte-identical to an uninterrupted run's.

More than one node: the inputs, the output directory and the artefact are read and written by
the actors at the driver's paths, so they must be at the same paths on every node (a shared
filesystem, or the artefact copied to each node); embedrt itself must be installed on every
node. An actor that cannot find the artefact or write the output says so, naming its node.

Ray is imported here, inside the functions: it is the [ray] extra, and nothing else in
embedrt imports this module but :func:`~.job.embed_corpus` when ``engine="ray"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from embedrt.runtime.cpus import usable_cpus
from embedrt.runtime.errors import MissingExtraError, Param

from .errors import CorpusError
from .job import Job
from .ray_worker import ERROR_COLUMN, FINISHED_COLUMN, TASK_COLUMN, UnitWorker, decode_error
from .writer import FinishedUnit

logger = logging.getLogger(__name__)

OPTION_NAMES = ("address", "actors", "cpus_per_actor")
DEFAULT_CPUS_PER_ACTOR = 1


@dataclass(frozen=True)
class RayOptions:
    """The Ray engine's settings (``CorpusOptions.engine_options``).

    Attributes:
        address: the cluster to join (``auto``: the one ``ray start`` runs on this host;
            ``HOST:6379`` or ``ray://HOST:10001`` another); None: the ``RAY_ADDRESS``
            environment variable's cluster if it is set (as in a ``ray job submit`` job), else a
            private local instance with this process's usable CPUs, stopped at the end (a
            cluster started with ``ray start`` is joined only when asked, with ``auto``).
        actors: embedding actors; None: as many as the cluster's CPUs allow at
            ``cpus_per_actor`` each (at most one per pending unit).
        cpus_per_actor: CPUs Ray reserves per actor, and its onnxruntime threads.
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: int = DEFAULT_CPUS_PER_ACTOR

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RayOptions:  # JSON-like values
        """Read and check ``engine_options``.

        Raises:
            CorpusError: an unknown key, or a value of the wrong type or range.
        """
        unknown = sorted(set(values) - set(OPTION_NAMES))
        if unknown:
            raise CorpusError(f"engine option(s) {', '.join(unknown)} are not Ray's; it takes "
                              f"{', '.join(OPTION_NAMES)}")
        address = values.get("address")
        if address is not None and (not isinstance(address, str) or not address):
            raise CorpusError(f"address must be a Ray address such as auto or ray://host:10001, got "
                              f"{address!r}; fix {{address}}", params=(Param("address"),))
        for name in ("actors", "cpus_per_actor"):
            value = values.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise CorpusError(f"{name} must be a positive integer, got {value!r}; fix {{{name}}}",
                                  params=(Param(name),))
        return cls(address, values.get("actors"), values.get("cpus_per_actor") or DEFAULT_CPUS_PER_ACTOR)


def run(job: Job) -> None:
    """Embed ``job``'s pending units on Ray actors, recording each finished unit.

    Joins the cluster at ``engine_options["address"]`` (or ``RAY_ADDRESS``), or starts a
    private local instance (stopped at the end); see :class:`RayOptions`. When Ray is already
    initialised in this process, that instance is used.

    Raises:
        MissingExtraError: Ray is not installed (the [ray] extra).
        CorpusError: an invalid engine option, more CPUs asked than the cluster has, no
            connection to the cluster, or the Ray job failed in Ray itself.
        BadRowError: a bad row with ``on_bad_row="fail"`` (every unit finished before it is
            recorded, so a rerun continues from there).
        Any embedrt error an actor met (a missing artefact or output directory on a node).
    """
    options = RayOptions.from_mapping(job.options.engine_options)
    if options.address is None and os.environ.get("RAY_ADDRESS"):
        options = dataclasses.replace(options, address=os.environ["RAY_ADDRESS"])
    ray = _import_ray()
    if not job.pending:
        return
    with _session(ray, options.address), _quiet_data(ray):
        actors = _actor_count(ray, options, len(job.pending))
        _note_session(job, ray, options, actors)
        dataset = ray.data.from_items(
            [{TASK_COLUMN: pickle.dumps(job.task(unit))} for unit in job.pending],
            override_num_blocks=len(job.pending),
        ).map_batches(
            UnitWorker,
            fn_constructor_kwargs=_worker_arguments(job, options),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
            num_cpus=options.cpus_per_actor,
        )
        try:
            _collect(job, dataset)
        except ray.exceptions.RayError as err:  # Ray's own failure (a node lost for good, say)
            raise CorpusError(
                f"the Ray job failed ({_last_line(err)}); the shards finished before it are "
                "recorded, so running the same command again resumes from them"
            ) from err


def _last_line(err: BaseException) -> str:
    """The last line of a Ray error's text (its first lines are a remote traceback)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    return last if len(last) <= 300 else last[:297] + "..."


def _collect(job: Job, dataset: Any) -> None:  # a ray.data.Dataset: Ray is optional
    """Record each unit's result as it arrives; raise the first error an actor reports.

    The units finished before it are recorded; the dataset's iterator is closed, which stops
    its actors.
    """
    rows = dataset.iter_rows()
    try:
        for row in rows:
            error = row[ERROR_COLUMN]
            if len(error):
                raise decode_error(bytes(error))
            unit = FinishedUnit.from_dict(json.loads(row[FINISHED_COLUMN]))
            job.finish(unit)
            job.advance(unit.rows_read, unit.embedded, unit.skipped)
    finally:
        with contextlib.suppress(Exception):  # a generator that already ended cannot be closed twice
            rows.close()


def _note_session(job: Job, ray: ModuleType, options: RayOptions, actors: int) -> None:
    """Record in ``run.json`` what this session runs on.

    The session's engine options as resolved, the cluster's size and Ray's version;
    ``threads`` is the threads per actor.
    """
    resources = ray.cluster_resources()
    job.record.note_session(options.cpus_per_actor, {
        "address": options.address, "actors": actors, "cpus_per_actor": options.cpus_per_actor,
        "cluster_cpus": int(resources.get("CPU", 0)), "nodes": len(ray.nodes()),
        "ray_version": ray.__version__,
    })
    logger.info("Ray engine: %d actors x %d CPUs for %d units", actors, options.cpus_per_actor,
                len(job.pending))


def _worker_arguments(job: Job, options: RayOptions) -> dict[str, Any]:
    calibration = job.calibration.to_dict() if job.calibration is not None else None
    return {
        "model": str(job.model), "out_dir": str(job.out_dir), "precision": job.options.precision,
        "calibration": calibration, "batch_size": job.options.batch_size,
        "threads": options.cpus_per_actor, "width": job.width,
    }


def _actor_count(ray: ModuleType, options: RayOptions, units: int) -> int:
    """``options.actors``, checked against the cluster's CPUs, or as many as fit."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    fitting = cpus // options.cpus_per_actor
    if options.actors is None:
        if fitting < 1:
            raise CorpusError(
                f"the Ray cluster has {cpus} CPUs, fewer than cpus_per_actor={options.cpus_per_actor}; "
                "lower {cpus_per_actor} or add nodes", params=(Param("cpus_per_actor"),),
            )
        return min(fitting, units)
    if options.actors * options.cpus_per_actor > cpus:
        raise CorpusError(
            f"{options.actors} actors x {options.cpus_per_actor} CPUs need "
            f"{options.actors * options.cpus_per_actor} CPUs; the Ray cluster has {cpus}, so the "
            f"actors could never all start. Pass {{actors}} {max(fitting, 1)} or fewer, or lower "
            "{cpus_per_actor}", params=(Param("actors"), Param("cpus_per_actor")),
        )
    return min(options.actors, units)


@contextlib.contextmanager
def _session(ray: ModuleType, address: str | None) -> Iterator[None]:
    """Ray for the job: the instance initialised here already, or one started (or joined) now.

    One started or joined here is shut down at the end.
    """
    if ray.is_initialized():
        if address is not None:
            logger.info("Ray is already initialised in this process; address %s is not used", address)
        yield
        return
    arguments: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address is None:
        # "local": a private instance even where `ray start` left a cluster Ray would join by
        # itself; sized by this process's CPUs (its affinity and quota), not the host's core
        # count, which would oversubscribe a CPU-limited container.
        arguments.update(address="local", num_cpus=usable_cpus())
    else:
        arguments["address"] = address
    try:
        ray.init(**arguments)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise CorpusError(
            f"cannot connect to the Ray cluster at {address} ({err}). Start one with `ray start "
            "--head` (then {address} auto on that host), or leave {address} unset for a private "
            "local instance. If the cluster uses token authentication (Ray enables it where "
            "~/.ray/auth_token exists), set RAY_AUTH_MODE=token here, with the cluster's token in "
            "~/.ray/auth_token", params=(Param("address"),),
        ) from err
    try:
        yield
    finally:
        ray.shutdown()


class _DropChatter(logging.Filter):
    """Drops Ray Data's notes that progress bars are off and that a dataset finished."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Progress bars disabled") or "execution finished in" in message)


_CHATTY_LOGGERS = ("ray.data._internal.progress", "ray.data._internal.execution.streaming_executor")


@contextlib.contextmanager
def _quiet_data(ray: ModuleType) -> Iterator[None]:
    """No Ray Data progress bars, start-up banners or end notes: the job reports progress.

    The process-wide DataContext and the loggers are restored afterwards. Ray Data's warnings
    (an actor that cannot be scheduled, say) still show.
    """
    context = ray.data.DataContext.get_current()
    # print_on_execution_start is not in every Ray 2.x: set what this version has.
    saved = {name: getattr(context, name) for name in ("enable_progress_bars", "print_on_execution_start")
             if hasattr(context, name)}
    for name in saved:
        setattr(context, name, False)
    chatter = _DropChatter()
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).addFilter(chatter)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).removeFilter(chatter)


def _import_ray() -> ModuleType:
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise MissingExtraError("ray", "embed-corpus --engine ray", "ray") from err
    return ray
