"""The torch boundary, the import directions between packages, and the package layout.

embedrt.runtime must work where torch, transformers, optimum and onnx cannot be imported;
nothing in it imports embedrt.bench or embedrt.export when it is imported (only the CLI's
commands reach them, inside the command); the server's batcher knows nothing of its metrics;
and the only import names are under embedrt (no bare ``runtime`` or ``export``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BANNED = ("torch", "transformers", "optimum", "onnx", "sentence_transformers")

BLOCKER = """
import importlib.abc, sys
BANNED = {banned!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BANNED:
            raise ImportError(f"blocked heavy import: {{name}}")
        return None
sys.meta_path.insert(0, Blocker())
"""


def _run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    script = BLOCKER.format(banned=BANNED) + code
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/"
    )


def test_runtime_embeds_with_heavy_libraries_blocked(tiny_bert: Path) -> None:
    result = _run_blocked(
        "import json, sys\n"
        "from embedrt.runtime import Embedder, cosine_similarity\n"
        "import embedrt.runtime.cli\n"
        f"e = Embedder.load({str(tiny_bert)!r})\n"
        "v = e.embed(['the cat', 'the dog'])\n"
        "print(json.dumps({'shape': list(v.shape), 'heavy': sorted(m for m in sys.modules "
        f"if m.split('.')[0] in {BANNED!r})}}))\n"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {"shape": [2, 32], "heavy": []}


# Every module of embedrt.runtime, imported with the heavy libraries blocked: none of them may
# import torch & co, embedrt.bench or embedrt.export. A module that needs an optional extra
# not installed here (starlette for the server's app, pyarrow for the corpus job) is reported
# and skipped by name; any other import failure fails the test.
WALK = """
import importlib, json, pkgutil, sys
import embedrt.runtime
OPTIONAL = {optional!r}
imported, skipped, failed = [], [], []
for info in pkgutil.walk_packages(embedrt.runtime.__path__, "embedrt.runtime."):
    if info.name.endswith("__main__"):
        continue  # running it is the CLI itself
    try:
        importlib.import_module(info.name)
        imported.append(info.name)
    except ImportError as err:
        (skipped if (err.name or "").split(".")[0] in OPTIONAL else failed).append(
            f"{{info.name}}: {{err!r}}")
# OpenVINO too: the runtime may import it only when a bf16 artefact is loaded.
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {banned!r} + ("openvino",)
                or m.startswith(("embedrt.bench", "embedrt.export")))
print(json.dumps({{"imported": imported, "skipped": skipped, "failed": failed, "leaked": leaked}}))
"""
OPTIONAL_EXTRAS = ("starlette", "uvicorn", "orjson", "pyarrow", "ray", "httptools", "uvloop")


def test_no_runtime_module_imports_heavy_or_export_or_bench_at_import_time() -> None:
    result = _run_blocked(WALK.format(optional=OPTIONAL_EXTRAS, banned=BANNED))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["failed"] == [] and report["leaked"] == []
    for required in ("embedrt.runtime.home", "embedrt.runtime.cli.app", "embedrt.runtime.cli.export",
                     "embedrt.runtime.cli.bench", "embedrt.runtime.cli.serve",
                     "embedrt.runtime.serve.config", "embedrt.runtime.serve.batcher"):
        assert required in report["imported"], report


def _imports(path: Path, top_level_only: bool) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``path`` (module level only, if asked),
    leaving out ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes: list[ast.AST] = []
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nodes.append(node)
        if not top_level_only or isinstance(node, (ast.If, ast.Try, ast.With)):
            pending.extend(ast.iter_child_nodes(node))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_only_the_cli_reaches_export_and_bench_and_only_inside_a_command() -> None:
    offenders = []
    for path in sorted((REPO / "runtime").rglob("*.py")):
        in_cli = path.parent == REPO / "runtime" / "cli"
        for line, name in _imports(path, top_level_only=in_cli):
            if name.startswith(("embedrt.export", "embedrt.bench")):
                offenders.append(f"{path.relative_to(REPO)}:{line} {name}")
    assert offenders == []


def test_the_batcher_does_not_import_the_servers_metrics_or_app() -> None:
    tree = ast.parse((REPO / "runtime" / "serve" / "batcher.py").read_text())
    relative = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    assert "metrics" not in relative and "app" not in relative and "config" in relative


def test_the_serve_package_and_its_config_need_no_serve_extra() -> None:
    code = ("import sys\nfor name in ('starlette', 'uvicorn', 'orjson'): sys.modules[name] = None\n"
            "import embedrt.runtime.serve, embedrt.runtime.serve.config, embedrt.runtime.serve.batcher\n"
            "import embedrt.runtime.cli\n")
    result = _run_blocked(code)
    assert result.returncode == 0, result.stderr


def test_every_package_says_what_it_is() -> None:
    for package in ("runtime", "runtime/serve", "runtime/cli"):
        tree = ast.parse((REPO / package / "__init__.py").read_text())
        assert ast.get_docstring(tree), f"{package}/__init__.py has no docstring"


def test_blocker_really_blocks() -> None:
    # The test above proves something only if the blocker works.
    result = _run_blocked("import onnx")
    assert result.returncode != 0 and "blocked heavy import: onnx" in result.stderr


def test_no_heavy_import_anywhere_in_runtime_source() -> None:
    offenders = []
    for path in sorted((REPO / "runtime").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in BANNED]
    assert offenders == []


@pytest.mark.parametrize("bare", ["runtime", "export", "bench", "models"])
def test_no_bare_top_level_import_names(bare: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import importlib.util; print(importlib.util.find_spec({bare!r}))"],
        capture_output=True, text=True, cwd="/", timeout=60,
    )
    assert result.stdout.strip() == "None", f"'{bare}' is importable as a top-level name"


def test_namespace_maps_to_the_top_level_folders() -> None:
    import embedrt.export
    import embedrt.runtime

    assert Path(embedrt.runtime.__file__).parent == REPO / "runtime"
    assert Path(embedrt.export.__file__).parent == REPO / "export"
