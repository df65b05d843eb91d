"""Resume after SIGKILL: a real ``embedrt embed-corpus`` process killed three times, then run to
the end, leaves exactly the bytes of an uninterrupted run.

The kill points are states, not times: the first kill comes once ``run.json`` records the session
(planning or int8 calibration under way, no shard yet), the others once the shards folder holds a
number of shards drawn from a seeded generator. The seed is in every failure message; set
EMBEDRT_TEST_SEED to replay one or to try others.
"""

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
from _helpers import finished_shards, make_texts, output_bytes

pytest.importorskip("pyarrow", reason="the corpus job writes Parquet: the [corpus] extra")

ROWS_PER_SHARD = 80  # 100 units: room for three kills at seeded shard counts
JSONL_ROWS, CSV_ROWS = 6_400, 1_600


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


def _written_shards(out: Path) -> int:
    """Shard files in the shards folder (a shard is renamed there before run.json records it)."""
    return len(list((out / "shards").glob("*.parquet"))) if (out / "shards").is_dir() else 0


def _sessions(out: Path) -> int:
    try:
        return len(json.loads((out / "run.json").read_text())["timings"]["sessions"])
    except (OSError, ValueError, KeyError):  # not written yet, or being replaced
        return 0


def _finish(inputs: list[Path], out: Path, model: Path, env: dict[str, str]):
    return subprocess.run(_command(inputs, out, model), capture_output=True, text=True, timeout=600, env=env)


def test_three_sigkills_then_completion_equal_an_uninterrupted_run(tiny_bert, tiny_model_words, tmp_path):
    inputs = _corpus(tmp_path / "in", tiny_model_words)
    units = -(-JSONL_ROWS // ROWS_PER_SHARD) + -(-CSV_ROWS // ROWS_PER_SHARD)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    whole = _finish(inputs, tmp_path / "whole", tiny_bert, env)
    assert whole.returncode == 0, whole.stderr

    seed = int(os.environ.get("EMBEDRT_TEST_SEED", "1017343621"))
    rng = random.Random(seed)
    out = tmp_path / "killed"
    kills: list[int] = []  # shards run.json records after each kill
    for kill in range(3):
        process = subprocess.Popen(_command(inputs, out, tiny_bert), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, env=env)
        # The first kill once this session is recorded (planning, the id index or calibration
        # under way); the others once a seeded number of further shards is written.
        target = 0
        if kill > 0:  # at most a third of what is left, so the run cannot end first
            target = _written_shards(out) + rng.randint(1, (units - finished_shards(out)) // 3)
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            if (_sessions(out) >= 1) if kill == 0 else (_written_shards(out) >= target):
                break
            time.sleep(0.002)
        assert process.poll() is None, f"the run ended before kill {kill + 1} (seed {seed}, kills {kills})"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        assert process.stderr is not None
        process.stderr.close()
        kills.append(finished_shards(out))
    print(f"seed {seed}: run.json recorded {kills} of {units} shards after the kills")
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
    assert len(record["timings"]["sessions"]) == 4  # three killed sessions and the one that finished
    third = _finish(inputs, out, tiny_bert, env)
    assert third.returncode == 0 and third.stdout.startswith("nothing to do"), third.stdout
