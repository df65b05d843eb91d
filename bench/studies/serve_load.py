"""Load run for `embedrt serve` on loopback, with the offline figures it is judged against.

    python -m embedrt.bench.studies.serve_load --model models/all-MiniLM-L6-v2/fp32 --out bench/results/serve

1. Offline, in this process before the server starts: batch-32 throughput and batch-1
   latency of the same artefact on the same short sentences.
2. A server process; 64 keep-alive clients send single short sentences for 30 s (closed
   loop), then a lower concurrency, then mixed-length lists.
3. A 10,000-request soak of varied lengths, with the server's RSS at its start and end.

With ``--open-loop`` it measures instead the server's capacity and then Poisson arrivals at
50 % and 80 % of it (see :mod:`.serve_open_loop`), writing serve_open_loop.json and .md:

    python -m embedrt.bench.studies.serve_load --open-loop --model DIR --threads 2 --out bench/results/serve

The client and the texts are :mod:`.serve_client`'s. Writes serve_load.json and serve_load.md
to --out.
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
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from embedrt.bench.machine import cpu_name, cpu_seconds, rss_bytes
from embedrt.bench.studies.serve_client import (
    command_line,
    request_bytes,
    run_phase,
    short_sentences,
    single_sentence_requests,
    start_server,
)
from embedrt.bench.studies.serve_open_loop import open_loop_main
from embedrt.runtime import Embedder

logger = logging.getLogger(__name__)

GENERATOR = "python asyncio, raw HTTP/1.1 keep-alive"
TARGETS = {"throughput_ratio_min": 0.70, "p99_over_batch1_max": 20.0, "rss_growth_max": 0.10}


def varied_text(rng: random.Random) -> str:
    """A text of 1 to 30 sentences (about 11 tokens each): mostly short, some past 256 tokens."""
    sentences = short_sentences(rng.choice([1, 1, 1, 1, 2, 2, 3, 5, 10, 30]), rng.randrange(10**6))
    return " ".join(sentences)


def offline_figures(model: Path, threads: int | None, texts: list[str]) -> dict[str, float]:
    """Batch-32 throughput (texts/s, median of 5) and CPU per text; batch-1 latency (p50 ms).

    The embedder is loaded as the server loads it (no spinning, padding to multiples of 16).
    """
    embedder = Embedder.load(model, threads=threads, pad_to_multiple_of=16, spin=False)
    embedder.embed(texts[:64], batch_size=32)
    rates = []
    cpu_started = cpu_seconds()
    for _ in range(5):
        started = time.perf_counter()
        embedder.embed(texts, batch_size=32)
        rates.append(len(texts) / (time.perf_counter() - started))
    # CPU per text is what the server's CPU per request compares with on a shared machine
    cpu_ms_per_text = 1000 * (cpu_seconds() - cpu_started) / (5 * len(texts))
    latencies = []
    for text in texts[:300]:
        started = time.perf_counter()
        embedder.embed([text])
        latencies.append(time.perf_counter() - started)
    return {"batch32_texts_per_s": statistics.median(rates), "batch32_cpu_ms_per_text": cpu_ms_per_text,
            "batch1_p50_ms": 1000 * statistics.median(latencies), "threads": embedder.threads}


def measured_phase(port: int, pid: int, clients: int, make: Any, **bounds: Any) -> dict[str, Any]:
    """One phase's summary plus the CPU the generator (this process) and the server used.

    Both share the machine's cores, so a generator that costs much would cap the server.
    """
    server_before, client_before = cpu_seconds(pid), cpu_seconds()
    summary = asyncio.run(run_phase(port, clients, make, **bounds)).summary()
    server, client = cpu_seconds(pid) - server_before, cpu_seconds() - client_before
    summary.update(generator=GENERATOR, server_cpu_s=server, generator_cpu_s=client,
                   server_cores=server / summary["seconds"], generator_cores=client / summary["seconds"],
                   server_cpu_ms_per_request=1000 * server / max(summary["requests"], 1))
    return summary


def load_phases(port: int, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every phase against the running server; returns their summaries and RSS figures."""
    singles = single_sentence_requests()

    def single(rng: random.Random) -> tuple[bytes, int]:
        return rng.choice(singles), 1

    def mixed_list(rng: random.Random) -> tuple[bytes, int]:
        texts = [varied_text(rng) for _ in range(rng.randint(1, 16))]
        return request_bytes("/v1/embeddings", {"input": texts}), len(texts)

    def soak(rng: random.Random) -> tuple[bytes, int]:
        texts = [varied_text(rng) for _ in range(rng.randint(1, 4))]
        return request_bytes("/embed", {"inputs": texts}), len(texts)

    phases: dict[str, Any] = {}
    asyncio.run(run_phase(port, args.concurrency, single, seconds=3))  # warm-up
    for name, clients, make, seconds in [
        (f"single_c{args.concurrency}", args.concurrency, single, args.duration),
        ("single_c8", 8, single, args.duration / 3),
        ("lists_c16", 16, mixed_list, args.duration / 2),
    ]:
        logger.info("phase %s: %d clients for %.0f s", name, clients, seconds)
        phases[name] = measured_phase(port, pid, clients, make, seconds=seconds)
    rss_start = rss_bytes(pid)
    logger.info("soak: %d requests", args.soak_requests)
    phases["soak"] = measured_phase(port, pid, 16, soak, total=args.soak_requests)
    rss_end = rss_bytes(pid)
    phases["soak"].update(rss_start_mib=rss_start / 2**20, rss_end_mib=rss_end / 2**20,
                          rss_growth=(rss_end - rss_start) / rss_start)
    return phases


def verdicts(offline: dict[str, float], phases: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """The three targets, each with its figure and whether it is met."""
    single = phases[f"single_c{concurrency}"]
    ratio = single["texts_per_s"] / offline["batch32_texts_per_s"]
    p99 = single["p99_ms"] / offline["batch1_p50_ms"]
    growth = phases["soak"]["rss_growth"]
    return {
        "throughput_ratio": {"value": ratio, "target": f">= {TARGETS['throughput_ratio_min']}",
                             "met": ratio >= TARGETS["throughput_ratio_min"]},
        "p99_over_batch1": {"value": p99, "target": f"<= {TARGETS['p99_over_batch1_max']}",
                            "met": p99 <= TARGETS["p99_over_batch1_max"]},
        "rss_growth": {"value": growth, "target": f"<= {TARGETS['rss_growth_max']}",
                       "met": growth <= TARGETS["rss_growth_max"]},
    }


def markdown(results: dict[str, Any]) -> str:
    """A human table of the results."""
    off = results["offline"]
    lines = [f"# embedrt serve load run: {results['model']}", "",
             f"`{results['command']}`", "",
             f"CPU: {results['cpu']}; onnxruntime threads: {off['threads']}; python {results['python']}", "",
             f"Offline (same artefact): batch-32 {off['batch32_texts_per_s']:.0f} texts/s; "
             f"batch-1 p50 {off['batch1_p50_ms']:.2f} ms; batch-32 CPU {off['batch32_cpu_ms_per_text']:.2f} "
             "ms per text", "",
             f"Load generator: {GENERATOR}, in the bench process on the same cores; CPU columns "
             "are cores used during the phase (CPU seconds / wall seconds).", "",
             "| phase | requests | texts/s | req/s | p50 ms | p95 ms | p99 ms | errors "
             "| server CPU | generator CPU | server CPU ms/req |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, p in results["phases"].items():
        lines.append(f"| {name} | {p['requests']} | {p['texts_per_s']:.0f} | {p['requests_per_s']:.0f} | "
                     f"{p['p50_ms']:.1f} | {p['p95_ms']:.1f} | {p['p99_ms']:.1f} | {p['errors'] or 0} "
                     f"| {p['server_cores']:.2f} | {p['generator_cores']:.2f} "
                     f"| {p['server_cpu_ms_per_request']:.2f} |")
    soak = results["phases"]["soak"]
    floor_ms = 1000 * results["concurrency"] / off["batch32_texts_per_s"]
    lines += ["", f"Closed loop, so Little's law bounds mean latency below by clients / throughput: even at "
              f"the offline batch-32 rate, {results['concurrency']} clients wait >= {floor_ms:.1f} ms on "
              f"average = {floor_ms / off['batch1_p50_ms']:.1f}x batch-1 p50 (the p99 target is "
              f"{TARGETS['p99_over_batch1_max']:.0f}x).",
              "", f"Load average (1 min) at start / end: {results['loadavg'][0]:.2f} / "
              f"{results['loadavg'][1]:.2f} (shared machine: other work takes "
              "cores from both the server and the offline baseline)."]
    lines += ["", f"Soak RSS: {soak['rss_start_mib']:.0f} MiB -> {soak['rss_end_mib']:.0f} MiB "
              f"({100 * soak['rss_growth']:+.1f}%)", "", "| target | figure | wanted | met |",
              "| --- | --- | --- | --- |"]
    for name, v in results["verdicts"].items():
        lines.append(f"| {name} | {v['value']:.3f} | {v['target']} | {'yes' if v['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run everything and write serve_load.json and serve_load.md to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results/serve"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--soak-requests", type=int, default=10_000)
    parser.add_argument("--server-arg", action="append", default=[], help="Passed to embedrt serve.")
    parser.add_argument("--open-loop", action="store_true",
                        help="Capacity, then Poisson arrivals at --load fractions of it.")
    parser.add_argument("--load", type=float, action="append", default=None,
                        help="Open loop: offered fraction of capacity (repeatable; default 0.5, 0.8).")
    parser.add_argument("--open-duration", type=float, default=60.0, help="Open loop: seconds per load.")
    parser.add_argument("--capacity-duration", type=float, default=15.0,
                        help="Open loop: seconds of the closed-loop capacity measurement.")
    parser.add_argument("--capacity", type=float, default=None,
                        help="Open loop: still measure capacity, but offer --load fractions of this many "
                        "requests/s instead (to compare server settings at the same offered rates).")
    parser.add_argument("--offline-texts", type=int, default=512,
                        help="Short sentences for the offline figures.")
    args = parser.parse_args(argv)
    if args.capacity is not None and args.capacity <= 0:
        parser.error(f"--capacity must be positive, got {args.capacity}")
    logging.basicConfig(level=logging.INFO, format="serve_load: %(message)s")
    load_start = os.getloadavg()[0]
    offline = offline_figures(args.model, args.threads, short_sentences(args.offline_texts, seed=1))
    logger.info("offline: %s", offline)
    if args.open_loop:
        open_loop_main(args, offline, argv)
        return
    process, port = start_server(args.model, args.threads, args.server_arg)
    try:
        phases = load_phases(port, process.pid, args)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    results = {"model": str(args.model), "command": command_line(argv), "cpu": cpu_name(),
               "python": platform.python_version(), "offline": offline, "phases": phases,
               "verdicts": verdicts(offline, phases, args.concurrency), "concurrency": args.concurrency,
               "loadavg": [load_start, os.getloadavg()[0]], "generator": GENERATOR}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(results, indent=2))
    (args.out / "serve_load.md").write_text(markdown(results))
    sys.stdout.write(markdown(results))


if __name__ == "__main__":
    main()
