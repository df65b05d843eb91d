"""bench/studies/corpus_job.py runs and writes its report (a tiny size: no figures are checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from embedrt.bench.workloads import LONG_TOKENS
from tokenizers import Tokenizer

pytest.importorskip("pyarrow", reason="the corpus job writes Parquet: the [corpus] extra")


def test_the_corpus_benchmark_runs_and_reports(tiny_bert: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "embedrt.bench.studies.corpus_job", "--out", str(tmp_path),
               "--model", str(tiny_bert), "--rows", "300", "--long-rows", "30",
               "--repeats", "1", "--threads", "2", "--processes", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["summary"]) == {"short", "long"}
    for corpus, rows in (("short", 300), ("long", 30)):
        summary = results["summary"][corpus]
        assert set(summary) == {"offline", "job", "job, 2 processes", "processes"}
        assert summary["offline"]["ratio_to_offline"] == [1.0]
        assert all(row["texts_per_second"] > 0 and row["peak_rss_mib"] > 0 for row in summary.values())
        run = results["runs"][corpus][0]
        assert run["job"]["texts"] == run["offline"]["texts"] == run["processes"]["texts"] == rows
    lines = (tmp_path / "corpora" / "long.jsonl").read_text().splitlines()
    tokenizer = Tokenizer.from_file(str(tiny_bert / "tokenizer.json"))
    tokenizer.no_truncation()
    tokens = [len(e.ids) for e in tokenizer.encode_batch([json.loads(line)["text"] for line in lines])]
    assert len(lines) == 30 and min(tokens) >= LONG_TOKENS[0]
    assert "| job, 2 processes |" in (tmp_path / "results.md").read_text()
