"""Open-loop load for ``embedrt serve``: Poisson arrivals at fractions of the measured capacity.

A closed loop of N clients cannot show tail latency under a given load: each client waits
for its answer before sending again, so a slow server is offered less (coordinated
omission), and Little's law fixes the mean wait at N / throughput. Here, instead:

1. capacity: closed-loop maximum throughput for single short sentences;
2. for each load (default 50 % and 80 % of capacity), requests are sent at Poisson arrival
   times fixed in advance for a set duration, each on an idle keep-alive connection (a new
   one when all are busy), and each latency is measured from the request's **scheduled**
   send time, so a generator or server that falls behind is charged for it.

Reported per load: p50/p95/p99 latency, errors, offered vs achieved throughput, and p99 as a
multiple of the offline batch-1 p50. Run through ``python -m embedrt.bench.studies.serve_load --open-loop``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from embedrt.bench.machine import cpu_name
from embedrt.bench.studies.serve_client import (
    command_line,
    exchange,
    run_phase,
    single_sentence_requests,
    start_server,
)

logger = logging.getLogger(__name__)

LOADS = (0.5, 0.8)
# The targets: p99 within these multiples of offline batch-1 p50 at each load, no
# errors, and the server keeping up with what is offered.
P99_OVER_BATCH1_MAX = {0.5: 10.0, 0.8: 25.0}
ACHIEVED_OVER_OFFERED_MIN = 0.98


def poisson_schedule(rate: float, duration: float, seed: int = 0) -> list[float]:
    """Send times (seconds from the start) of a Poisson process of ``rate`` per second.

    Raises:
        ValueError: ``rate`` or ``duration`` is not positive.
    """
    if rate <= 0 or duration <= 0:
        raise ValueError(f"Poisson schedule needs a positive rate and duration, got {rate} and {duration}")
    rng = np.random.default_rng(seed)
    times: list[float] = []
    now = float(rng.exponential(1 / rate))
    while now < duration:
        times.append(now)
        now += float(rng.exponential(1 / rate))
    return times


@dataclass(frozen=True)
class Outcome:
    """One request: when it was due, when it really went out, when it ended, and how.

    Times are seconds from the run's start on one monotonic clock. ``status`` is the HTTP
    status, or 0 when the connection failed.
    """

    scheduled: float
    sent: float
    done: float
    status: int

    @property
    def latency(self) -> float:
        """Seconds from the scheduled send time (not the actual one) to the answer."""
        return self.done - self.scheduled


@dataclass
class OpenLoopResult:
    """Every outcome of one open-loop phase."""

    duration: float
    scheduled: int
    outcomes: list[Outcome] = field(default_factory=list)
    connections: int = 0

    def summary(self, batch1_p50_ms: float | None = None) -> dict[str, Any]:
        """The phase's figures.

        Offered vs achieved throughput, latency percentiles (ms) from the scheduled times,
        errors, how late the generator sent, and p99 over the offline batch-1 p50.
        """
        ok = [o for o in self.outcomes if o.status == 200]
        errors: dict[str, int] = {}
        for outcome in self.outcomes:
            if outcome.status != 200:
                key = str(outcome.status) if outcome.status else "connection"
                errors[key] = errors.get(key, 0) + 1
        missing = self.scheduled - len(self.outcomes)
        if missing:
            errors["unanswered"] = missing
        latencies = np.array([o.latency for o in ok]) * 1e3 if ok else np.full(1, np.nan)
        lag = np.array([o.sent - o.scheduled for o in self.outcomes]) * 1e3 if self.outcomes else np.zeros(1)
        span = max(self.duration, max((o.done for o in ok), default=0.0))
        p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99]))
        offered = self.scheduled / self.duration
        summary: dict[str, Any] = {
            "scheduled": self.scheduled, "ok": len(ok), "errors": errors, "duration_s": self.duration,
            "offered_per_s": offered, "achieved_per_s": len(ok) / span,
            "achieved_over_offered": len(ok) / span / offered if offered else None,
            "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": float(np.max(latencies)),
            "send_lag_p99_ms": float(np.percentile(lag, 99)), "send_lag_max_ms": float(np.max(lag)),
            "connections": self.connections,
        }
        if batch1_p50_ms:
            summary["p99_over_batch1_p50"] = p99 / batch1_p50_ms
        return summary


# A connection idle this long is closed by the client, as HTTP client pools do (httpx's
# keepalive_expiry): uvicorn closes keep-alive connections idle for 5 s, and a request sent on
# one it has just closed fails although the server is healthy.
KEEPALIVE_EXPIRY_S = 2.0


class _Connections:
    """Idle keep-alive connections to the server, most recently used first.

    A new one when none is idle; one idle longer than :data:`KEEPALIVE_EXPIRY_S` is closed.
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self._idle: list[tuple[float, tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = []
        self.opened = 0

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = asyncio.get_running_loop().time()
        while self._idle:
            returned, connection = self._idle.pop()
            if now - returned < KEEPALIVE_EXPIRY_S:
                return connection
            connection[1].close()
        self.opened += 1
        return await asyncio.open_connection("127.0.0.1", self._port)

    def give_back(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self._idle.append((asyncio.get_running_loop().time(), connection))

    def close(self) -> None:
        for _, (_, writer) in self._idle:
            writer.close()


async def run_open_loop(port: int, requests: Sequence[bytes], schedule: Sequence[float],
                        duration: float, timeout: float = 30.0) -> OpenLoopResult:
    """Send ``requests`` (cycled) at the ``schedule``'s times; wait up to ``timeout`` s for the last.

    A request whose connection fails or times out is an error (status 0), never dropped.
    """
    loop = asyncio.get_running_loop()
    pool = _Connections(port)
    result = OpenLoopResult(duration=duration, scheduled=len(schedule))
    start = loop.time() + 0.05

    async def one(index: int, due: float) -> None:
        sent = loop.time() - start
        status = 0
        connection = None
        try:
            connection = await pool.take()
            status = await asyncio.wait_for(exchange(*connection, requests[index % len(requests)]), timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as err:
            logger.debug("request %d failed: %s", index, err)
            if connection is not None:
                connection[1].close()
            connection = None
        result.outcomes.append(Outcome(due, sent, loop.time() - start, status))
        if connection is not None:
            pool.give_back(connection)

    tasks = []
    for index, due in enumerate(schedule):
        delay = start + due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, due)))
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:  # still unanswered: counted as such by the summary
            task.cancel()
    result.connections = pool.opened
    pool.close()
    return result


def verdicts(phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The open-loop targets, each with its figure and whether it is met."""
    results: dict[str, Any] = {}
    for name, phase in phases.items():
        load = phase["load"]
        limit = P99_OVER_BATCH1_MAX.get(load)
        ratio = phase.get("p99_over_batch1_p50")
        if limit is not None and ratio is not None:
            results[f"{name}_p99_over_batch1"] = {"value": ratio, "target": f"<= {limit}",
                                                  "met": ratio <= limit}
        results[f"{name}_errors"] = {"value": sum(phase["errors"].values()), "target": "0",
                                     "met": not phase["errors"]}
        kept = phase["achieved_over_offered"]
        results[f"{name}_throughput"] = {"value": kept, "target": f">= {ACHIEVED_OVER_OFFERED_MIN}",
                                         "met": kept is not None and kept >= ACHIEVED_OVER_OFFERED_MIN}
    return results


def markdown(results: dict[str, Any]) -> str:
    """A human table of an open-loop run."""
    off, capacity = results["offline"], results["capacity"]
    lines = [f"# embedrt serve, open-loop load: {results['model']}", "", f"`{results['command']}`", "",
             f"CPU: {results['cpu']}; onnxruntime threads: {off['threads']}; python {results['python']}", "",
             f"Offline (same artefact): batch-1 p50 {off['batch1_p50_ms']:.2f} ms; batch-32 "
             f"{off['batch32_texts_per_s']:.0f} texts/s.", "",
             f"Capacity (closed loop, {capacity['clients']} clients, single short sentences, "
             f"{capacity['seconds']:.0f} s): {capacity['requests_per_s']:.0f} requests/s"
             + (f"; loads below are fractions of the given {capacity['offered_fractions_of']:.0f} requests/s "
                "(--capacity)." if "offered_fractions_of" in capacity else "."), "",
             "Poisson arrivals, latency from each request's scheduled send time (no coordinated omission).",
             "", "| load | offered req/s | achieved req/s | achieved / offered | p50 ms | p95 ms | p99 ms "
             "| p99 / batch-1 p50 | errors | send lag p99 ms | connections |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for phase in results["phases"].values():
        lines.append(
            f"| {100 * phase['load']:.0f} % | {phase['offered_per_s']:.0f} | {phase['achieved_per_s']:.0f} "
            f"| {phase['achieved_over_offered']:.3f} | {phase['p50_ms']:.1f} | {phase['p95_ms']:.1f} "
            f"| {phase['p99_ms']:.1f} | {phase.get('p99_over_batch1_p50', float('nan')):.1f}x "
            f"| {sum(phase['errors'].values()) or 0} | {phase['send_lag_p99_ms']:.2f} "
            f"| {phase['connections']} |")
    lines += ["", "| target | figure | wanted | met |", "| --- | --- | --- | --- |"]
    for name, verdict in results["verdicts"].items():
        value = verdict["value"]
        shown = "–" if value is None else f"{value:.3f}"
        lines.append(f"| {name} | {shown} | {verdict['target']} | {'yes' if verdict['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def open_loop_phases(port: int, args: argparse.Namespace, batch1_p50_ms: float) -> dict[str, Any]:
    """Capacity (closed loop, single short sentences), then one open-loop phase per load."""
    singles = single_sentence_requests()

    def single(rng: random.Random) -> tuple[bytes, int]:
        return rng.choice(singles), 1

    asyncio.run(run_phase(port, args.concurrency, single, seconds=min(3.0, args.capacity_duration)))
    closed = asyncio.run(run_phase(port, args.concurrency, single, seconds=args.capacity_duration))
    capacity = closed.summary()
    capacity["clients"] = args.concurrency
    logger.info("capacity: %.0f requests/s", capacity["requests_per_s"])
    base = capacity["requests_per_s"]
    if args.capacity is not None:
        base = capacity["offered_fractions_of"] = args.capacity
        logger.info("loads are fractions of the given %.0f requests/s", base)
    phases: dict[str, Any] = {}
    for index, load in enumerate(args.load or LOADS):
        rate = load * base
        schedule = poisson_schedule(rate, args.open_duration, seed=index)
        logger.info("open loop at %.0f %% of capacity: %d requests over %.0f s", 100 * load, len(schedule),
                    args.open_duration)
        result = asyncio.run(run_open_loop(port, singles, schedule, args.open_duration))
        phases[f"load_{round(100 * load)}"] = {"load": load, **result.summary(batch1_p50_ms)}
    return {"capacity": capacity, "phases": phases}


def open_loop_main(args: argparse.Namespace, offline: dict[str, float], argv: list[str] | None) -> None:
    """The ``--open-loop`` run: server, capacity, loads; writes serve_open_loop.json and .md."""
    process, port = start_server(args.model, args.threads, args.server_arg)
    try:
        measured = open_loop_phases(port, args, offline["batch1_p50_ms"])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    results = {"model": str(args.model), "command": command_line(argv), "cpu": cpu_name(),
               "python": platform.python_version(), "offline": offline, **measured,
               "verdicts": verdicts(measured["phases"]), "loadavg_end": os.getloadavg()[0]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_open_loop.json").write_text(json.dumps(results, indent=2))
    (args.out / "serve_open_loop.md").write_text(markdown(results))
    sys.stdout.write(markdown(results))
