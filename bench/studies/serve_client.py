"""What both serve load studies use: the texts, a raw HTTP/1.1 client, and `embedrt serve` started.

The client is raw asyncio HTTP/1.1 (no JSON parsing of responses) so that, on a small
machine, the load generator takes as little CPU from the server as it can. :mod:`.serve_load`
(closed loop) and :mod:`.serve_open_loop` (Poisson arrivals) both send through
:func:`exchange`; the closed loop's :func:`run_phase` also measures the open loop's capacity.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

COMMAND = "python -m embedrt.bench.studies.serve_load"
SUBJECTS = ["A man", "The woman", "A child", "Two dogs", "The bank", "A small cat", "The committee",
            "My friend"]
VERBS = ["is playing", "approved", "walked past", "was reading about", "quickly sold", "slept near"]
OBJECTS = ["a guitar.", "the loan.", "the river bank.", "an old book on physics.", "the red car.",
           "a quiet house by the sea."]


def short_sentences(count: int, seed: int = 0) -> list[str]:
    """Short STS-like sentences (8-14 tokens)."""
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}" for _ in range(count)]


def single_sentence_requests(count: int = 500) -> list[bytes]:
    """``count`` OpenAI-style requests of one short sentence each (the same ones in every study)."""
    return [request_bytes("/v1/embeddings", {"input": t}) for t in short_sentences(count, seed=1)]


def command_line(argv: Sequence[str] | None) -> str:
    """The command of this run as a report quotes it (``argv`` None: this process's arguments)."""
    return " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])


@dataclass
class PhaseResult:
    """What one load phase measured."""

    requests: int = 0
    texts: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Throughput and latency percentiles (ms)."""
        lat = np.array(self.latencies) * 1000 if self.latencies else np.zeros(1)
        return {"requests": self.requests, "texts": self.texts, "seconds": round(self.seconds, 2),
                "requests_per_s": self.requests / self.seconds, "texts_per_s": self.texts / self.seconds,
                "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                "p99_ms": float(np.percentile(lat, 99)), "errors": self.errors}


def request_bytes(path: str, payload: dict[str, Any]) -> bytes:
    """One POST of ``payload`` as JSON to ``path``, as raw HTTP/1.1 bytes."""
    body = json.dumps(payload).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one request on a keep-alive connection and read the whole answer; its HTTP status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return status


async def run_phase(port: int, clients: int, make: Any, seconds: float | None = None,
                    total: int | None = None) -> PhaseResult:
    """Closed-loop clients, each on one keep-alive connection, until time or count runs out.

    ``make(rng)`` returns (request bytes, number of texts).
    """
    result = PhaseResult()
    stop_at = time.perf_counter() + seconds if seconds else float("inf")
    issued = 0

    async def client(index: int) -> None:
        nonlocal issued
        rng = random.Random(index)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop_at and (total is None or issued < total):
            issued += 1
            request, texts = make(rng)
            started = time.perf_counter()
            status = await exchange(reader, writer, request)
            if status == 200:
                result.latencies.append(time.perf_counter() - started)
                result.requests += 1
                result.texts += texts
            else:
                result.errors[str(status)] = result.errors.get(str(status), 0) + 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    result.seconds = time.perf_counter() - started
    return result


def start_server(model: Path, threads: int | None, extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """Start `embedrt serve` on a free port and wait for /health. Raises RuntimeError if it dies."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    command = [sys.executable, "-m", "embedrt.cli", "serve", "--model", str(model),
               "--port", str(port), "--log-level", "warning", *extra]
    if threads:
        command += ["--threads", str(threads)]
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return process, port
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not become ready in 120 s")
