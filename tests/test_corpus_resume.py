"""Resume after SIGKILL: a real ``embedrt embed-corpus`` process killed three times at random
points, then run to the end, leaves exactly the bytes of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="the corpus job writes Parquet: the [corpus] extra")

ROWS_PER_SHARD = 200
JSONL_ROWS, CSV_ROWS = 16_000, 4_000


def make_texts(words: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(count)]


def output_bytes(out: Path) -> dict[str, bytes]:
    """Every output file's bytes by relative path; run.json without its timings."""
    found = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    record = json.loads(found.pop("run.json"))
    record.pop("timings")
    found["run.json"] = json.dumps(record, sort_keys=True).encode()
    return found


def _corpus(directory: Path, words: list[str]) -> list[Path]:
    """JSONL and CSV rows with ids, a few bad rows and duplicate ids."""
    directory.mkdir()
    rng = random.Random(7)
    texts = make_texts(words, JSONL_ROWS + CSV_ROWS, seed=3)
    lines = []
    for i, text in enumerate(texts[:JSONL_ROWS]):
        if i % 997 == 5:
            lines.append('{"id": "broken", "text": ')
        elif i % 1013 == 9:
            lines.append(json.dumps({"id": f"j{i - 1}", "text": text}))  # a duplicate id
        else:
            lines.append(json.dumps({"id": f"j{i}", "text": text}))
    jsonl = directory / "a.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    csv_file = directory / "b.csv"
    rows = [f'c{i},"{t}"' if rng.random() > 0.002 else f"c{i}," for i, t in enumerate(texts[JSONL_ROWS:])]
    csv_file.write_text("id,text\n" + "\n".join(rows) + "\n")
    return [jsonl, csv_file]


def _command(inputs: list[Path], out: Path, model: Path) -> list[str]:
    return [
        sys.executable, "-m", "embedrt.cli", "embed-corpus", *map(str, inputs), "--out", str(out),
        "--model", str(model), "--precision", "int8", "--calibration-rows", "300", "--id-column", "id",
        "--on-bad-row", "skip", "--rows-per-shard", str(ROWS_PER_SHARD), "--chunk-rows", "40",
        "--threads", "1", "--quiet",
    ]


def _finished_shards(out: Path) -> int:
    try:
        return len(json.loads((out / "run.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):  # not written yet, or being replaced
        return 0


def _finish(inputs: list[Path], out: Path, model: Path, env: dict[str, str]):
    return subprocess.run(_command(inputs, out, model), capture_output=True, text=True, timeout=600, env=env)


def test_three_sigkills_then_completion_equal_an_uninterrupted_run(tiny_bert, tiny_model_words, tmp_path):
    inputs = _corpus(tmp_path / "in", tiny_model_words)
    units = -(-JSONL_ROWS // ROWS_PER_SHARD) + -(-CSV_ROWS // ROWS_PER_SHARD)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    started = time.monotonic()
    whole = subprocess.run(_command(inputs, tmp_path / "whole", tiny_bert), capture_output=True, text=True,
                           timeout=600, env=env)
    assert whole.returncode == 0, whole.stderr
    duration = time.monotonic() - started

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    out = tmp_path / "killed"
    kills = []
    for kill in range(3):
        done = _finished_shards(out)
        # the first kill lands at a random time in the first third of a run (start-up, planning,
        # calibration or the first shards); the others once the run has moved on by a random
        # number of shards, plus up to 30 ms
        target = done + rng.randint(1, (units - done) // 3)
        process = subprocess.Popen(_command(inputs, out, tiny_bert), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 300
        if kill == 0:
            time.sleep(rng.uniform(0.05, 0.35) * duration)
        else:
            while _finished_shards(out) < target and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.03))
        assert process.poll() is None, f"the run ended before kill {kill + 1} (seed {seed})"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        kills.append(_finished_shards(out))
    assert kills[-1] < units, f"kills after {kills} of {units} shards: the last came too late (seed {seed})"
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    resumed = _finish(inputs, out, tiny_bert, env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after {kills[-1]} finished shards" in resumed.stdout, (resumed.stdout, kills, seed)
    assert output_bytes(out) == output_bytes(tmp_path / "whole"), f"seed {seed}, kills after {kills} shards"

    record = json.loads((out / "run.json").read_text())
    counts = record["counts"]
    assert counts["read"] == counts["embedded"] + counts["skipped"] == JSONL_ROWS + CSV_ROWS
    assert counts["shards"] == units
    assert counts["skipped"] == len((out / "skipped.jsonl").read_text().splitlines()) > 0
    assert len(record["timings"]["sessions"]) == 4 or kills[0] == 0  # the first kill may precede run.json
    third = _finish(inputs, out, tiny_bert, env)
    assert third.returncode == 0 and third.stdout.startswith("nothing to do"), third.stdout
