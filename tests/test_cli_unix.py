"""Unix manners: a closed stdout ends a command quietly (exit 0, as cat does); a real write
failure is one line naming the file. Real pipes, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "embedrt.cli"]


def _to_closed_pipe(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with stdout a pipe whose read end is closed before the process starts,
    so its first write fails with EPIPE (what `| head` does, without the race)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([*CLI, *args], stdout=write_end, stderr=subprocess.PIPE, input=stdin,
                              timeout=120)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("fmt", ["info", "jsonl", "npy"])
def test_closed_stdout_ends_quietly(tiny_bert: Path, fmt: str) -> None:
    if fmt == "info":
        result = _to_closed_pipe("info", str(tiny_bert))
    else:
        result = _to_closed_pipe("embed", "-", "-m", str(tiny_bert), "--format", fmt,
                                 stdin=b"the cat sat\n" * 50)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""


def test_head_on_a_large_npy_stream_exits_quietly(tiny_bert: Path, tmp_path: Path) -> None:
    # 4,000 vectors (512 kB) through `head -c 10`: far more than a pipe buffers, so the writer
    # meets the closed pipe; pipefail makes the pipeline's status embedrt's if it fails.
    texts = tmp_path / "big.txt"
    texts.write_text("the cat sat on the road\n" * 4000)
    command = (f"set -o pipefail; {sys.executable} -m embedrt.cli embed - -m {tiny_bert} "
               f"--format npy < {texts} | head -c 10 > {tmp_path / 'head.bin'}")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert (tmp_path / "head.bin").read_bytes() == b"\x93NUMPY\x01\x00v\x00"


def test_info_piped_to_head_prints_its_first_line(tiny_bert: Path) -> None:
    command = f"set -o pipefail; {sys.executable} -m embedrt.cli info {tiny_bert} | head -1"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"artefact        {tiny_bert}\n" and result.stderr == ""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_a_real_failure_naming_the_file(tiny_bert: Path) -> None:
    result = subprocess.run([*CLI, "embed", "x", "-m", str(tiny_bert), "--format", "npy", "-o", "/dev/full"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "embedrt: error: /dev/full: No space left on device"
