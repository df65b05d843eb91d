"""Open-loop serving load (`python -m embedrt.bench.studies.serve_load --open-loop`).

The schedule and the latency arithmetic are checked exactly; the generator is checked against a
deliberately slow in-test HTTP server (one request at a time), where latency measured from the
scheduled send time must include the queueing a closed loop would hide; and one short real run
against `embedrt serve` on the tiny model checks the report's figures against each other and
against the known schedule. No timing target is asserted.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from embedrt.bench.studies.serve_open_loop import (
    OpenLoopResult,
    Outcome,
    poisson_schedule,
    run_open_loop,
    verdicts,
)

SERVICE_SECONDS = 0.02


def test_poisson_schedule_has_the_rate_and_exponential_gaps() -> None:
    times = poisson_schedule(1000.0, 10.0, seed=1)
    assert times == sorted(times) and 0 < times[0] and times[-1] < 10.0
    assert abs(len(times) - 10_000) < 500  # 5 standard deviations of a Poisson count
    gaps = np.diff(times)
    assert abs(gaps.mean() - 1e-3) < 5e-5 and abs(gaps.std() / gaps.mean() - 1.0) < 0.05
    assert poisson_schedule(1000.0, 10.0, seed=1) == times  # a seed fixes the schedule
    with pytest.raises(ValueError, match="positive rate and duration"):
        poisson_schedule(0.0, 10.0)


def test_latency_counts_from_the_scheduled_time() -> None:
    result = OpenLoopResult(duration=1.0, scheduled=5, connections=2, outcomes=[
        Outcome(scheduled=0.1, sent=0.1, done=0.11, status=200),
        Outcome(scheduled=0.2, sent=0.5, done=0.51, status=200),  # sent 300 ms late: charged for it
        Outcome(scheduled=0.3, sent=0.3, done=0.31, status=200),
        Outcome(scheduled=0.4, sent=0.4, done=0.45, status=503),
    ])
    summary = result.summary(batch1_p50_ms=2.0)
    assert summary["max_ms"] == pytest.approx(310.0)
    assert summary["p50_ms"] == pytest.approx(10.0)
    assert summary["p99_over_batch1_p50"] == pytest.approx(summary["p99_ms"] / 2.0)
    assert summary["send_lag_max_ms"] == pytest.approx(300.0)
    assert summary["errors"] == {"503": 1, "unanswered": 1}
    assert summary["offered_per_s"] == 5.0 and summary["achieved_per_s"] == 3.0
    assert summary["achieved_over_offered"] == pytest.approx(0.6)
    checks = verdicts({"load_50": {"load": 0.5, **summary}})
    assert checks["load_50_errors"] == {"value": 2, "target": "0", "met": False}
    assert checks["load_50_throughput"]["met"] is False
    assert checks["load_50_p99_over_batch1"]["met"] is False  # ~155x > 10x


async def _slow_server() -> tuple[asyncio.AbstractServer, int]:
    """HTTP/1.1 keep-alive server answering one request at a time, each after SERVICE_SECONDS."""
    busy = asyncio.Lock()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                async with busy:
                    await asyncio.sleep(SERVICE_SECONDS)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def test_a_burst_queues_and_the_queueing_is_measured() -> None:
    request = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"

    async def scenario() -> OpenLoopResult:
        server, port = await _slow_server()
        async with server:
            # Ten requests due at once: the server serves them one after the other.
            return await run_open_loop(port, [request], [0.01] * 10, duration=0.5, timeout=10)

    result = asyncio.run(scenario())
    summary = result.summary()
    assert summary["ok"] == 10 and summary["errors"] == {}
    assert result.connections == 10  # none idle when each was due: one connection each
    latencies = sorted(o.latency for o in result.outcomes)
    # The last waits for the nine before it; a send-time clock in a closed loop would see ~20 ms.
    assert latencies[-1] >= 9.5 * SERVICE_SECONDS
    assert latencies[0] >= SERVICE_SECONDS * 0.9


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("starlette", "uvicorn")),
    reason="the real server run needs the [serve] extra",
)
def test_short_real_run_writes_the_report(tiny_bert: Path, tmp_path: Path) -> None:
    from embedrt.bench.studies import serve_load

    # --capacity fixes the rate the loads are fractions of, so the schedule is known: 30 % of
    # 200 requests/s for 1 s, Poisson with the first phase's seed (0).
    serve_load.main(["--open-loop", "--model", str(tiny_bert), "--threads", "1", "--concurrency", "2",
                     "--capacity-duration", "1", "--open-duration", "1", "--load", "0.3", "--capacity", "200",
                     "--offline-texts", "16", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "serve_open_loop.json").read_text())
    assert set(results) >= {"model", "command", "cpu", "offline", "capacity", "phases", "verdicts"}
    capacity = results["capacity"]
    assert capacity["clients"] == 2 and capacity["offered_fractions_of"] == 200
    assert capacity["requests"] > 0 and capacity["errors"] == {}
    assert capacity["requests_per_s"] == pytest.approx(capacity["requests"] / capacity["seconds"], rel=0.02)
    phase = results["phases"]["load_30"]
    scheduled = len(poisson_schedule(0.3 * 200, 1.0, seed=0))
    assert phase["load"] == 0.3 and phase["scheduled"] == scheduled and phase["duration_s"] == 1.0
    assert phase["offered_per_s"] == pytest.approx(scheduled / 1.0)
    # Every request of a light load on the tiny model is answered, and the figures agree.
    assert phase["ok"] == scheduled and phase["errors"] == {}
    assert phase["achieved_over_offered"] == pytest.approx(phase["achieved_per_s"] / phase["offered_per_s"])
    assert 0 < phase["p50_ms"] <= phase["p95_ms"] <= phase["p99_ms"] <= phase["max_ms"]
    assert phase["send_lag_max_ms"] <= phase["max_ms"]  # latency counts from the scheduled time
    assert 1 <= phase["connections"] <= scheduled
    batch1 = results["offline"]["batch1_p50_ms"]
    assert batch1 > 0 and phase["p99_over_batch1_p50"] == pytest.approx(phase["p99_ms"] / batch1)
    assert results["verdicts"] == {  # no latency target at 30 %
        "load_30_errors": {"value": 0, "target": "0", "met": True},
        "load_30_throughput": {"value": phase["achieved_over_offered"], "target": ">= 0.98",
                               "met": phase["achieved_over_offered"] >= 0.98},
    }
    markdown = (tmp_path / "serve_open_loop.md").read_text()
    assert f"| 30 % | {scheduled} |" in markdown and "scheduled send time" in markdown
