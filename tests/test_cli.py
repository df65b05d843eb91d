"""The CLI: output formats, inputs, exit codes, one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from embedrt.cli import app
from embedrt.runtime import Embedder
from typer.testing import CliRunner

runner = CliRunner()
TEXTS = ["the cat sat", "a man is playing guitar", ""]


def _run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a new process."""
    code = "from embedrt.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def test_embed_jsonl_matches_the_python_api(tiny_bert: Path) -> None:
    result = runner.invoke(app, ["embed", *TEXTS, "--model", str(tiny_bert)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    expected = Embedder.load(tiny_bert).embed(TEXTS)
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-6)
    assert rows[0]["tokens"] == 5 and rows[0]["truncated"] is False


def test_embed_npy_from_file(tiny_bert: Path, tmp_path: Path) -> None:
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "vectors.npy"
    result = runner.invoke(app, ["embed", "--file", str(source), "-m", str(tiny_bert),
                                 "--format", "npy", "-o", str(out)])
    assert result.exit_code == 0, result.output
    vectors = np.load(out)
    assert vectors.shape == (3, 32)  # the empty last line is an input too; no phantom row
    np.testing.assert_allclose(vectors, Embedder.load(tiny_bert).embed(TEXTS), atol=1e-6)


def test_embed_npy_from_stdin_to_stdout(tiny_bert: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from embedrt.cli import main; main()",
         "embed", "-", "-m", str(tiny_bert), "--format", "npy"],
        input="\n".join(TEXTS).encode() + b"\n", capture_output=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    vectors = np.load(io.BytesIO(result.stdout))
    assert vectors.shape == (3, 32)  # one text per line: the last, empty line included
    np.testing.assert_allclose(vectors, Embedder.load(tiny_bert).embed(TEXTS), atol=1e-6)


def test_embed_reports_truncation_on_stderr(tiny_bert: Path) -> None:
    result = _run_cli("embed", "hello", "the cat sat on the road " * 10, "-m", str(tiny_bert))
    assert result.returncode == 0, result.stderr
    assert "truncated 1 of 2 inputs to max_seq_length=24 tokens" in result.stderr
    assert json.loads(result.stdout.splitlines()[1])["truncated"] is True


def test_no_truncate_fails_with_one_line(tiny_bert: Path) -> None:
    result = _run_cli("embed", "the cat sat on the road " * 10, "--no-truncate", "-m", str(tiny_bert))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "embedrt: error: input 0 has 62 tokens; the model accepts at most 24. Pass --truncate "
        "or shorten it (starts: 'the cat sat on the road the cat sat on t')"
    ]


def test_similarity(tiny_bert: Path) -> None:
    result = runner.invoke(app, ["similarity", "the cat", "the dog", "-m", str(tiny_bert)])
    assert result.exit_code == 0, result.output
    a, b = Embedder.load(tiny_bert).embed(["the cat", "the dog"])
    assert result.stdout.strip() == f"embedrt (fp32): {float(a @ b):.6f}"


def test_info(tiny_bert: Path) -> None:
    result = runner.invoke(app, ["info", str(tiny_bert)])
    assert result.exit_code == 0, result.output
    assert "max tokens      24" in result.stdout
    assert "pipeline        mean pooling -> L2 normalise" in result.stdout
    raw = runner.invoke(app, ["info", str(tiny_bert), "--json"])
    assert json.loads(raw.stdout)["max_seq_length"] == 24


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "/nonexistent/artefact"],
         "embedrt: error: /nonexistent/artefact: no such artefact directory"),
        (["embed", "-m", "/nonexistent/artefact", "x"], "no such artefact directory"),
        (["embed", "--file", "/nonexistent/texts.txt", "-m", "."], "/nonexistent/texts.txt"),
        (["embed", "-m", "."], "no texts given"),
    ],
)
def test_errors_are_one_line_and_exit_1(args: list[str], message: str) -> None:
    result = _run_cli(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["export", "embed", "similarity", "info"])
def test_help_has_an_example(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Example: embedrt " + command in result.stdout
