"""The README and docs/: links resolve, documented commands exist and run, no history told.

Every fenced shell block (sh, shell, bash, console) in README.md and docs/*.md is read command by
command (continuation lines joined, comments dropped, pipes, ``&&`` and redirections split off).
What happens to each documented ``embedrt ...`` command:

- **Run** on the session's tiny exported model (``tiny_bert``; ``tiny_bert_int8`` where the
  documented model path names int8), in a fresh directory holding ``texts.txt``, ``big.txt``,
  ``more.jsonl`` and a ``docs/`` folder of texts: ``embed``, ``similarity`` (without
  ``--reference``), ``info``, ``embed-corpus`` (local engine), ``search`` (on a corpus the test
  embeds first), ``rerank``, and any command with ``--help``. Every ``--model``/``-m`` value and
  ``info``'s artefact argument become the tiny model, every ``--reranker``/``--rerank`` value a
  tiny cross-encoder; otherwise ``EMBEDRT_MODEL`` points at the tiny model; a documented .txt or
  .jsonl input the directory lacks is written with the test texts. Each must exit 0 with the
  output its command promises (checked against the Embedder or Reranker where it is a value).
- **Parsed only**, against the real command's options (click's ``make_context``, strict: an
  unknown command or option, a missing value, an extra argument or a value out of range fails):
  ``export`` (exports a real model with torch, minutes), ``bench`` (minutes of measuring),
  ``serve`` (runs until stopped), ``embed-corpus --engine ray`` (starts Ray) and
  ``similarity --reference`` (runs the model on torch). ``export``'s ``--variant``, ``--isa`` and
  ``--min-cosine`` also go through ``ExportOptions``, which checks them by name and range (with
  ``--variant auto``, which gates its candidates itself, the CLI refuses the other two).
- ``python -m embedrt...`` lines: the module must exist and print its ``--help``, and every
  ``--option`` the line shows must be in that help. ``make TARGET`` lines: the target must
  exist. ``pip install -e '.[extra]'`` lines: the extra must exist in pyproject.toml. Every
  command of the CLI has a row in docs/cli.md's table, and docs/layout.md's import directions
  are the ones tests/test_boundary.py enforces.

Fenced python blocks run in a subprocess with ``EMBEDRT_MODEL`` set to the tiny model, except
those in :data:`COMPILE_ONLY` (exporting the real model, a client of a running server), which
are compiled only. Links: every relative link in those files names an existing file, and a
``#anchor`` on a Markdown file names one of its headings. README.md has at most 250 lines, and
no page tells project history (:data:`HISTORY`).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer.main
from _reranker_fixtures import reranker_artefact, tiny_cross_encoders  # noqa: F401  (fixtures by name)
from embedrt.cli import app
from embedrt.runtime import Embedder, Manifest, Reranker, cosine_similarity
from embedrt.runtime.home import AUTO_VARIANT
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
README_MAX_LINES = 250
SHELL_LANGS = {"sh", "shell", "bash", "console"}
# Commands that cannot run in a test, and why: these are parsed against their options only.
PARSE_ONLY = {
    "export": "exports a real model with torch (minutes)",
    "bench": "minutes of measuring",
    "serve": "runs until stopped",
}
# Python blocks that are compiled, not run, and the marker that says why.
COMPILE_ONLY = {
    "export_model(": "exports the real model with torch",
    "OpenAI(": "a client of a running server",
}
# Wording that tells the project's history instead of describing what is.
HISTORY = [
    r"\bsince this stop\b",
    r"\bstop \d+\b",
    r"\b(?:this|previous|earlier|last) stop\b",
    r"\b(?:this|previous|earlier) session\b",
    r"\bcommit [0-9a-f]{7,40}\b",
    r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b",  # a commit hash
    r"\bno longer\b",
    r"\bused to\b",
    r"\bis gone\b",
    r"\bthe old (?:layout|default|recipe|code)\b",
    r"\b(?:previous|former|old) default\b",
    r"\bearlier the same day\b",
    r"\bissue \d+\b",
    r"\bnow (?:also|uses)\b",
]
TEXTS = ["the cat sat on the mat", "a man is playing guitar", "", "the dog runs"]


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it starts, its language, its text (dedented)."""

    page: Path
    line: int
    lang: str
    text: str


@dataclass(frozen=True)
class Command:
    """One documented shell command: its words, and the file its stdin comes from."""

    page: Path
    line: int
    words: tuple[str, ...]
    stdin: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def _blocks(page: Path) -> Iterator[Block]:
    fence = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
    lines = page.read_text(encoding="utf-8").splitlines()
    start = None
    for number, line in enumerate(lines, 1):
        match = fence.match(line)
        if match is None:
            continue
        if start is None:
            start, indent, lang = number, len(match["indent"]), match["lang"]
        elif not match["lang"]:
            body = [text[indent:] if text[:indent].isspace() else text.lstrip()
                    for text in lines[start:number - 1]]
            yield Block(page, start, lang, "\n".join(body))
            start = None


def _commands(block: Block) -> Iterator[Command]:
    """The commands of a shell block; a pipe's ``cat FILE |`` or ``< FILE`` becomes stdin."""
    text = re.sub(r"\\\n", " ", block.text)
    text = re.sub(r"<([A-Za-z][\w.-]*)>", r"{\1}", text)  # <home> placeholders are not redirections
    for offset, line in enumerate(text.splitlines()):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        segments: list[list[str]] = [[]]
        for word in words:
            if word in {"|", "&&", "||", ";"}:
                segments.append([word])
            else:
                segments[-1].append(word)
        previous: list[str] = []
        for segment in segments:
            piped = bool(segment) and segment[0] == "|"
            segment = [w for w in segment if w not in {"|", "&&", "||", ";"}]
            stdin = previous[1] if piped and previous[:1] == ["cat"] and len(previous) > 1 else None
            words_out: list[str] = []
            iterator = iter(segment)
            for word in iterator:
                if word == "<":
                    stdin = next(iterator)
                elif word in {">", ">>"}:
                    next(iterator)
                else:
                    words_out.append(word)
            while words_out and re.match(r"^[A-Z_]+=", words_out[0]):
                words_out.pop(0)  # VAR=value before a command
            if words_out:
                yield Command(block.page, block.line + 1 + offset, tuple(words_out), stdin)
            previous = segment


def _documented() -> list[Command]:
    return [c for page in PAGES for b in _blocks(page) if b.lang in SHELL_LANGS for c in _commands(b)]


COMMANDS = _documented()
EMBEDRT = [c for c in COMMANDS if c.words[0] == "embedrt"]


def _parse_only(command: Command) -> str | None:
    """Why ``command`` is parsed, not run; None when it runs."""
    args = command.words[1:]
    if "--help" in args:
        return None
    if args and args[0] in PARSE_ONLY:
        return PARSE_ONLY[args[0]]
    if args[:1] == ("embed-corpus",) and "ray" in args and "--engine" in args:
        return "starts Ray"
    if args[:1] == ("similarity",) and "--reference" in args:
        return "runs the model on torch"
    return None


RUN = [c for c in EMBEDRT if _parse_only(c) is None]
PARSED = [c for c in EMBEDRT if _parse_only(c) is not None]


def _id(command: Command) -> str:
    return f"{command.where} {' '.join(command.words[1:3])}"


def test_the_docs_document_commands_of_every_kind() -> None:
    run = {c.words[1] for c in RUN}
    assert {"embed", "similarity", "info", "embed-corpus", "search"} <= run, run
    assert {"export", "bench", "serve"} <= {c.words[1] for c in PARSED}


def _workspace(root: Path) -> Path:
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    (root / "big.txt").write_text("\n".join(TEXTS * 50) + "\n", encoding="utf-8")
    (root / "more.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    (root / "docs").mkdir()
    (root / "docs" / "a.txt").write_text("\n".join(TEXTS[:2]) + "\n", encoding="utf-8")
    (root / "docs" / "b.jsonl").write_text(json.dumps({"text": "a bank"}) + "\n", encoding="utf-8")
    return root


def _with_tiny_model(
    words: tuple[str, ...], fp32: Path, int8: Path, reranker: Callable[[], Path]
) -> list[str]:
    out = list(words[1:])
    for i, word in enumerate(out):
        if i > 0 and out[i - 1] in {"--model", "-m"}:
            out[i] = str(int8 if "int8" in word else fp32)
        elif i > 0 and out[i - 1] in {"--reranker", "-r", "--rerank"}:
            out[i] = str(reranker())
    if out[0] == "info":
        positional = [i for i, w in enumerate(out[1:], 1) if not w.startswith("-")]
        for i in positional:
            out[i] = str(int8 if "int8" in out[i] else fp32)
    return out


@pytest.mark.export  # the commands run on tiny models exported in the session
@pytest.mark.parametrize("command", RUN, ids=_id)
def test_documented_command_runs_on_a_tiny_model(
    command: Command, tiny_bert: Path, tiny_bert_int8: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    root = _workspace(tmp_path)
    monkeypatch.chdir(root)
    env = {"EMBEDRT_MODEL": str(tiny_bert), "EMBEDRT_HOME": str(tmp_path / "home")}

    def reranker() -> Path:  # a tiny cross-encoder, exported only for a command that names one
        export: Callable[[str, str], Path] = request.getfixturevalue("reranker_artefact")
        return export("bert", "fp32")

    args = _with_tiny_model(command.words, tiny_bert, tiny_bert_int8, reranker)
    for word in [*args[1:], command.stdin or ""]:  # a documented input the workspace lacks: the texts
        if re.fullmatch(r"[\w./-]+\.(txt|jsonl)", word) and not (root / word).exists():
            (root / word).parent.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps({"text": t}) for t in TEXTS] if word.endswith(".jsonl") else TEXTS
            (root / word).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if args[0] == "search" and "--help" not in args:
        corpus = CliRunner().invoke(app, ["embed-corpus", "docs/", "--out", args[1], "-q"], env=env)
        assert corpus.exit_code == 0, corpus.output
    stdin = (root / command.stdin).read_bytes() if command.stdin else None
    result = CliRunner().invoke(app, args, input=stdin, env=env)
    assert result.exit_code == 0, f"{command.where}: embedrt {' '.join(args)}\n{result.output}"
    _check_output(args, result.stdout_bytes, root, stdin, tiny_bert)


def _params(args: list[str]) -> dict[str, Any]:
    """The options and arguments the CLI parses from ``args`` (``args[0]`` the command)."""
    group = typer.main.get_command(app)
    parent = group.make_context("embedrt", args[:1], resilient_parsing=True)
    command = group.get_command(parent, args[0])  # type: ignore[attr-defined]
    assert command is not None, f"no command {args[0]!r}"
    return dict(command.make_context(args[0], args[1:], parent=parent).params)


def _check_output(args: list[str], stdout: bytes, root: Path, stdin: bytes | None, default: Path) -> None:
    """What the command promises, as values: vectors and scores against the Embedder's."""
    if "--help" in args:
        assert b"Usage:" in stdout
        return
    name, p = args[0], _params(args)
    model = Path(p.get("model") or default)
    if name == "embed":
        if p["file"] is not None:
            texts = (root / p["file"]).read_text(encoding="utf-8").splitlines()
        elif list(p["texts"] or ()) == ["-"]:
            texts = (stdin or b"").decode().splitlines()
        else:
            texts = list(p["texts"])
        expected = Embedder.load(model, truncate_dim=p["truncate_dim"]).embed(
            texts, truncate=p["truncate"], prompt=p["prompt"], prompt_name=p["prompt_name"])
        if p["output_format"] == "npy":  # a str, or the str-valued enum
            got = np.load(root / p["output"]) if p["output"] else np.load(io.BytesIO(stdout))
        else:
            got = np.array([json.loads(line)["embedding"] for line in stdout.decode().splitlines()])
        np.testing.assert_allclose(got, expected, atol=1e-6)
    elif name == "similarity":
        a, b = Embedder.load(model).embed([p["a"], p["b"]])
        assert float(stdout.decode().split(":")[1]) == pytest.approx(cosine_similarity(a, b), abs=1e-6)
    elif name == "info":
        manifest = Manifest.load(model)
        if p["as_json"]:
            assert json.loads(stdout) == manifest.to_dict()
        else:
            assert f"variant         {manifest.variant}\n".encode() in stdout
            assert b"checksums       ok" in stdout
    elif name == "embed-corpus":
        counts = json.loads((root / p["out"] / "run.json").read_text(encoding="utf-8"))["counts"]
        assert counts["embedded"] > 0 and counts["read"] == counts["embedded"] + counts["skipped"]
    elif name == "search":
        scores = [json.loads(line)["score"] for line in stdout.decode().splitlines()]
        assert 0 < len(scores) <= p["k"] and scores == sorted(scores, reverse=True)
        assert p.get("rerank") or all(-1.0 <= score <= 1.0 + 1e-6 for score in scores)
    elif name == "rerank":
        documents = ((stdin or b"").decode() if p["documents"] == "-"
                     else (root / p["documents"]).read_text(encoding="utf-8")).splitlines()
        ranking = Reranker.load(p["reranker"]).rank(p["query"], documents, top_k=p["top_k"])
        if p["table"]:
            rows = stdout.decode().splitlines()[1:]
            assert [int(row.split()[1]) for row in rows] == [r.index for r in ranking]
        else:
            lines = [json.loads(line) for line in stdout.decode().splitlines()]
            assert [line["index"] for line in lines] == [r.index for r in ranking]
            scores = [line["score"] for line in lines]
            np.testing.assert_allclose(scores, [r.score for r in ranking], atol=1e-6)
    else:
        pytest.fail(f"no check of what 'embedrt {name}' promises: add one")


@pytest.mark.parametrize("command", PARSED, ids=_id)
def test_documented_command_parses(command: Command) -> None:
    params = _params(list(command.words[1:]))  # strict: unknown options, missing values fail
    if command.words[1] == "export" and params["variant"] == AUTO_VARIANT:
        # auto builds this CPU's recipes and gates every candidate itself: the CLI refuses these
        assert params["isa"] is None and params["min_cosine"] is None and params["check"], command.where
    elif command.words[1] == "export":
        from embedrt.export import ExportOptions

        ExportOptions(variant=params["variant"], isa=params["isa"], min_cosine=params["min_cosine"])


MODULE_LINES = [c for c in COMMANDS if c.words[:2] == ("python", "-m")]


@pytest.mark.parametrize("command", MODULE_LINES, ids=_id)
def test_documented_module_exists_with_its_options(command: Command) -> None:
    module = command.words[2]
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                            timeout=180, cwd=REPO)
    assert result.returncode == 0, f"{command.where}: python -m {module} --help\n{result.stderr}"
    for option in (w.split("=")[0] for w in command.words[3:] if w.startswith("--")):
        assert option in result.stdout, f"{command.where}: {module} has no option {option}"


def test_every_command_is_documented() -> None:
    from embedrt.cli.app import COMMANDS as CLI_COMMANDS

    reference = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = [name for name in CLI_COMMANDS if f"| `embedrt {name}" not in reference]
    assert not missing, f"commands docs/cli.md's table does not list: {missing}"


def test_layout_page_states_the_import_directions_the_boundary_test_checks() -> None:
    spec = importlib.util.spec_from_file_location("_boundary_for_docs", REPO / "tests" / "test_boundary.py")
    assert spec is not None and spec.loader is not None
    boundary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(boundary)
    allowed: dict[str, set[str]] = boundary.ALLOWED
    page = (REPO / "docs" / "layout.md").read_text(encoding="utf-8")
    documented = {}
    for package, imports in re.findall(r"^\| `embedrt\.(\w+)` \| ([^|]*?) \|$", page, re.MULTILINE):
        if imports == "everything":
            documented[package] = set(allowed) - {package}
        elif imports == "nothing of embedrt":
            documented[package] = set()
        else:
            documented[package] = set(re.findall(r"`(\w+)`", imports))
    assert documented == allowed


def test_documented_make_targets_exist() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = {c.words[1] for c in COMMANDS if c.words[0] == "make" and len(c.words) > 1}
    assert targets
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), f"no make target {target}"


def test_documented_extras_exist() -> None:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([\w-]+) = \[", section, re.MULTILINE))
    documented = {
        extra
        for c in COMMANDS if c.words[:2] == ("pip", "install")
        for word in c.words if (match := re.match(r"^\.\[([\w,-]+)\]$", word))
        for extra in match[1].split(",")
    }
    assert documented, "no pip install -e '.[extra]' line found"
    assert documented <= extras, f"documented extras that pyproject.toml lacks: {documented - extras}"


PYTHON_BLOCKS = [b for page in PAGES for b in _blocks(page) if b.lang == "python"]


@pytest.mark.export
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: f"{b.page.relative_to(REPO)}:{b.line}")
def test_documented_python_runs(block: Block, tiny_bert: Path, tmp_path: Path) -> None:
    code = compile(block.text, f"{block.page.name}:{block.line}", "exec")
    if any(marker in block.text for marker in COMPILE_ONLY):
        return
    del code
    env = {**os.environ, "EMBEDRT_MODEL": str(tiny_bert), "EMBEDRT_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", block.text], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, f"{block.page.name}:{block.line}\n{result.stderr}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)):
            slug = _slug(match[1])
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(page: Path) -> Iterator[tuple[int, str]]:
    in_code = False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        for match in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line)):
            yield number, match[1]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for number, target in _links(page):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{page.name}:{number}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{page.name}:{number}: {target} (no heading #{anchor})")
    assert not broken, "\n".join(broken)


def test_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_project_history(page: Path) -> None:
    found = [
        f"{page.name}:{number}: {match[0]!r}"
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        for pattern in HISTORY
        for match in re.finditer(pattern, line, re.IGNORECASE)
    ]
    assert not found, "history wording (describe what is, with its command and CPU):\n" + "\n".join(found)
