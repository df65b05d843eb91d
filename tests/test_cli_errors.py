"""Every command, driven through the real CLI with a bad argument of each kind.

A bad option value keeps Typer's usage message and exit status 2; everything else embedrt
refuses is one line on stderr, ``embedrt: error: ...``, and exit status 1. Never a traceback.
Each case runs in a new process, with the modules a case says are missing made unimportable.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "optimum", "onnx", "sentence_transformers")
# A meta-path finder that makes the named top-level modules unimportable (and find_spec fail).
BLOCK = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"blocked: {{name}}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
for name in list(sys.modules):
    if name.split(".")[0] in {blocked!r}:
        del sys.modules[name]
sys.argv = ["embedrt", *{args!r}]
from embedrt.cli import main
main()
"""


def run_cli(
    *args: str, blocked: tuple[str, ...] = (), cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``embedrt ARGS`` in a new process, with ``blocked`` modules unimportable."""
    code = BLOCK.format(blocked=tuple(blocked), args=list(args))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedrt: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_usage_error(result: subprocess.CompletedProcess[str], option: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Usage: embedrt" in result.stderr and option in result.stderr, result.stderr
    assert result.stdout == ""


@pytest.fixture(scope="module")
def corrupt(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Artefacts broken in each way: bad manifest JSON, a changed model.onnx, no tokenizer."""
    root = tmp_path_factory.mktemp("corrupt")
    broken = {}
    for kind in ("manifest", "model", "tokenizer"):
        target = root / kind
        shutil.copytree(tiny_bert, target)
        broken[kind] = target
    (broken["manifest"] / "manifest.json").write_text("{not json")
    with open(broken["model"] / "model.onnx", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xff\xff\xff")
    (broken["tokenizer"] / "tokenizer.json").unlink()
    return broken


# --- export: options are checked before anything heavy loads --------------------------------


def test_export_unknown_isa_fails_before_torch_naming_the_choices() -> None:
    # torch & co are unimportable here: reaching them would fail differently (a missing extra).
    line = assert_one_line_error(run_cli("export", "--variant", "int8", "--isa", "sse2", blocked=HEAVY),
                                 "sse2", "avx512_vnni", "avx2")
    assert "[export]" not in line and "arm64" not in line


def test_export_isa_arm64_is_gone_and_says_which_file_arm64_runs() -> None:
    # --isa arm64 wrote the avx512_vnni model.onnx byte for byte: the label is dropped (issue 14).
    assert_one_line_error(run_cli("export", "--variant", "int8", "--isa", "arm64", blocked=HEAVY),
                          "--isa 'arm64' is not a known target", "runs the avx512_vnni int8 file",
                          "one file serves x86 with VNNI and arm64")


def test_export_unknown_variant_fails_before_torch_naming_the_choices() -> None:
    assert_one_line_error(run_cli("export", "--variant", "int9", blocked=HEAVY),
                          "int9", "fp32", "int8", "int4-edge")


def test_export_bad_option_value_is_a_usage_error() -> None:
    assert_usage_error(run_cli("export", "--min-cosine", "2", blocked=HEAVY), "--min-cosine")


def test_export_without_the_extra_names_it(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("export", "--out", str(tmp_path / "out"), blocked=HEAVY),
                          "[export] extra", "pip install -e '.[export]'")


# --- embed ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["manifest", "model", "tokenizer"])
def test_embed_corrupt_artefact(corrupt: dict[str, Path], kind: str) -> None:
    expected = {"manifest": "not valid JSON", "model": "model.onnx: sha256 does not match",
                "tokenizer": "tokenizer.json is missing"}[kind]
    assert_one_line_error(run_cli("embed", "x", "-m", str(corrupt[kind])), str(corrupt[kind]), expected)


def test_embed_missing_artefact(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("embed", "x", "-m", str(tmp_path / "absent")), "no such artefact directory")


@pytest.mark.parametrize(("args", "option"), [(["--batch-size", "0"], "--batch-size"),
                                              (["--format", "xml"], "--format"),
                                              (["--threads", "-1"], "--threads")])
def test_embed_bad_option_values(tiny_bert: Path, args: list[str], option: str) -> None:
    assert_usage_error(run_cli("embed", "x", "-m", str(tiny_bert), *args), option)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["the cat sat on the road " * 10, "--no-truncate"],
         ("input 0 has 62 tokens; the model accepts at most 24", "Pass --truncate")),
        (["--file", "/nonexistent/texts.txt"], ("/nonexistent/texts.txt", "No such file")),
        (["x", "--file", "/etc/hostname"], ("not both",)),
        ([], ("no texts given",)),
    ],
)
def test_embed_bad_input(tiny_bert: Path, args: list[str], fragments: tuple[str, ...]) -> None:
    line = assert_one_line_error(run_cli("embed", "-m", str(tiny_bert), *args), *fragments)
    assert "truncate=True" not in line  # the CLI names its flag, not the Python keyword


# --- similarity -------------------------------------------------------------------------------


def test_similarity_missing_and_corrupt_artefact(tmp_path: Path, corrupt: dict[str, Path]) -> None:
    assert_one_line_error(run_cli("similarity", "a", "b", "-m", str(tmp_path / "absent")),
                          "no such artefact directory")
    assert_one_line_error(run_cli("similarity", "a", "b", "-m", str(corrupt["model"])), "sha256")


def test_similarity_bad_option_value(tiny_bert: Path) -> None:
    assert_usage_error(run_cli("similarity", "a", "b", "-m", str(tiny_bert), "--threads", "0"), "--threads")


def test_similarity_reference_without_the_extra_fails_before_printing(tiny_bert: Path) -> None:
    result = run_cli("similarity", "a", "b", "-m", str(tiny_bert), "--reference", blocked=HEAVY)
    assert_one_line_error(result, "similarity --reference needs the [export] extra")
    assert result.stdout == ""


# --- info -------------------------------------------------------------------------------------


def test_info_missing_and_corrupt_artefact(tmp_path: Path, corrupt: dict[str, Path]) -> None:
    assert_one_line_error(run_cli("info", str(tmp_path / "absent")), "no such artefact directory")
    assert_one_line_error(run_cli("info", str(corrupt["manifest"])), "manifest.json: not valid JSON")
    model = corrupt["model"] / "model.onnx"
    assert_one_line_error(run_cli("info", str(corrupt["model"])), f"{model}: sha256 does not match")
    assert_one_line_error(run_cli("info", str(corrupt["model"]), "--json"), f"{model}: sha256")


def test_info_no_verify_says_it_did_not(corrupt: dict[str, Path], tiny_bert: Path) -> None:
    result = run_cli("info", str(corrupt["model"]), "--no-verify")
    assert result.returncode == 0, result.stderr
    assert "checksums       not verified (--no-verify)" in result.stdout
    verified = run_cli("info", str(tiny_bert))
    assert verified.returncode == 0, verified.stderr
    assert "checksums       ok: sha256 of model.onnx, tokenizer.json" in verified.stdout


def test_info_bad_option_is_a_usage_error(tiny_bert: Path) -> None:
    assert_usage_error(run_cli("info", str(tiny_bert), "--jsn"), "--jsn")


# --- serve ------------------------------------------------------------------------------------


@pytest.mark.extras("serve")
def test_serve_missing_and_corrupt_artefact(tmp_path: Path, corrupt: dict[str, Path]) -> None:
    assert_one_line_error(run_cli("serve", "-m", str(tmp_path / "absent"), "--port", "0"),
                          "no such artefact directory")
    assert_one_line_error(run_cli("serve", "-m", str(corrupt["manifest"]), "--port", "0"), "not valid JSON")


def test_serve_bad_option_values(tiny_bert: Path) -> None:
    assert_usage_error(run_cli("serve", "-m", str(tiny_bert), "--port", "70000"), "--port")
    assert_usage_error(run_cli("serve", "-m", str(tiny_bert), "--max-queue", "1"), "--max-queue")
    # Each value is fine alone; together they contradict: the message names both flags.
    assert_one_line_error(
        run_cli("serve", "-m", str(tiny_bert), "--max-inputs", "8", "--max-queue", "8"),
        "--max-queue (8) must be at least --max-inputs + 1 (9)",
    )


def test_serve_without_the_extra_names_it(tiny_bert: Path) -> None:
    assert_one_line_error(run_cli("serve", "-m", str(tiny_bert), blocked=("starlette", "uvicorn")),
                          "embedrt serve needs the [serve] extra", "pip install -e '.[serve]'")


# --- bench ------------------------------------------------------------------------------------


def test_bench_bad_option_value() -> None:
    assert_usage_error(run_cli("bench", "--threads", "0"), "--threads")


def test_bench_without_the_extra_names_it(tiny_bert: Path) -> None:
    assert_one_line_error(run_cli("bench", "-m", str(tiny_bert), blocked=("matplotlib",)),
                          "embedrt bench needs the [bench] extra")


@pytest.mark.extras("bench")
def test_bench_missing_artefact(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("bench", "-m", str(tmp_path / "absent"), "--out", str(tmp_path / "o")),
                          "no such artefact directory")


# --- rerank -----------------------------------------------------------------------------------


def test_rerank_refuses_an_embedding_artefact(tiny_bert: Path, tmp_path: Path) -> None:
    documents = tmp_path / "docs.txt"
    documents.write_text("the cat\nthe dog\n")
    assert_one_line_error(run_cli("rerank", "a cat", str(documents), "--reranker", str(tiny_bert)),
                          "not a reranker")


def test_rerank_bad_option_value(tmp_path: Path) -> None:
    assert_usage_error(run_cli("rerank", "q", "-", "--reranker", str(tmp_path), "--top-k", "0"), "--top-k")


def test_every_command_is_covered_here() -> None:
    from embedrt.cli.app import COMMANDS

    source = Path(__file__).read_text()
    for name in COMMANDS:
        if name in ("search", "embed-corpus"):  # the corpus commands' own tests cover them
            continue
        assert f'run_cli("{name}"' in source, f"no bad-argument case for {name}"


def test_errors_keep_their_python_keyword_outside_the_cli(tiny_bert: Path) -> None:
    from embedrt.runtime import Embedder, InputTooLongError
    from embedrt.runtime.errors import cli_spelling, json_spelling

    with pytest.raises(InputTooLongError) as caught:
        Embedder.load(tiny_bert).embed(["the cat sat on the road " * 10], truncate=False)
    err = caught.value
    assert "Pass truncate=True or shorten it" in str(err)
    assert "Pass --truncate or shorten it" in err.render(cli_spelling)
    assert 'Pass "truncate": true or shorten it' in err.render(json_spelling)
    assert err.param is not None and err.param.keyword == "truncate"
    assert json.loads("{" + err.render(json_spelling).split("Pass ")[1].split(" or")[0] + "}") == {
        "truncate": True}
