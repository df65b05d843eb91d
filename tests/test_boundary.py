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
        "import embedrt.cli\n"
        f"e = Embedder.load({str(tiny_bert)!r})\n"
        "v = e.embed(['the cat', 'the dog'])\n"
        "print(json.dumps({'shape': list(v.shape), 'heavy': sorted(m for m in sys.modules "
        f"if m.split('.')[0] in {BANNED!r})}}))\n"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {"shape": [2, 32], "heavy": []}


# Every module of the library and the applications on it (server, corpus job, CLI), imported
# with the heavy libraries blocked: none of them may
# import torch & co, embedrt.bench or embedrt.export. A module that needs an optional extra
# not installed here (starlette for the server's app, pyarrow for the corpus job) is reported
# and skipped by name; any other import failure fails the test.
WALK = """
import importlib, json, pkgutil, sys
OPTIONAL = {optional!r}
imported, skipped, failed = [], [], []
infos = []
for name in ("embedrt.runtime", "embedrt.serve", "embedrt.corpus", "embedrt.cli"):
    package = importlib.import_module(name)
    imported.append(name)
    infos += pkgutil.walk_packages(package.__path__, name + ".")
for info in infos:
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
    for required in ("embedrt.runtime.home", "embedrt.cli.app", "embedrt.cli.export",
                     "embedrt.cli.bench", "embedrt.cli.serve",
                     "embedrt.serve.config", "embedrt.serve.batcher"):
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


# Which package may import which, inside functions too (the CLI is the one composition root):
# the library at the bottom, the applications (server, corpus job) on it, export beside them,
# bench above export, the CLI on top. ``models`` is data any layer may read.
PACKAGES = ("runtime", "serve", "corpus", "cli", "export", "bench", "models")
ALLOWED = {
    "models": set(),
    "runtime": {"models"},
    "serve": {"runtime", "models"},
    "corpus": {"runtime", "models"},
    "export": {"runtime", "models"},
    "bench": {"runtime", "export", "serve", "corpus", "models"},
    "cli": {"runtime", "export", "serve", "corpus", "bench", "models"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["embedrt", *parts])


def _embedrt_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every embedrt import in ``path``, absolute or relative, at any depth
    (functions included), leaving out ``if TYPE_CHECKING:`` blocks."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for line, name, level, names in _all_imports(path):
        if level:
            base = package.split(".")
            name = ".".join(base[: len(base) - (level - 1)] + ([name] if name else []))
        found.append((line, name))
        # ``from pkg import module`` imports a module too
        found += [(line, f"{name}.{member}") for member in names]
    return [(line, name) for line, name in found if name.startswith("embedrt.")]


def _all_imports(path: Path) -> list[tuple[int, str, int, list[str]]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str, int, list[str]]] = []
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level, [a.name for a in node.names]))
        pending.extend(ast.iter_child_nodes(node))
    return found


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_every_import_between_packages_goes_an_allowed_direction() -> None:
    offenders = []
    for path in _sources():
        own = path.relative_to(REPO).parts[0]
        for line, name in _embedrt_imports(path):
            target = name.split(".")[1]
            if target != own and target not in ALLOWED[own]:
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert offenders == []


def test_the_direction_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    # The check above proves something only if it sees a lazy, relative import.
    probe = REPO / "runtime" / "_direction_probe.py"
    probe.write_text("def f():\n    from ..cli import app\n    import embedrt.bench.run\n")
    try:
        names = [name for _, name in _embedrt_imports(probe)]
    finally:
        probe.unlink()
    assert "embedrt.cli" in names and "embedrt.bench.run" in names


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in _sources()}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for _, name in _embedrt_imports(path):
            # the deepest known module the name refers to (``from pkg import module`` included)
            while name and name not in modules:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_between_modules() -> None:
    # A package's __init__ re-exports its modules' names, so a module's import of its own
    # package (``from embedrt.runtime import Embedder`` inside runtime/) is left out; every
    # other edge, lazy ones included, counts.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in _import_graph().items()}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_batcher_does_not_import_the_servers_metrics_or_app() -> None:
    tree = ast.parse((REPO / "serve" / "batcher.py").read_text())
    relative = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    assert "metrics" not in relative and "app" not in relative and "config" in relative


def test_the_serve_package_and_its_config_need_no_serve_extra() -> None:
    code = ("import sys\nfor name in ('starlette', 'uvicorn', 'orjson'): sys.modules[name] = None\n"
            "import embedrt.serve, embedrt.serve.config, embedrt.serve.batcher\n"
            "import embedrt.cli\n")
    result = _run_blocked(code)
    assert result.returncode == 0, result.stderr


def test_every_package_says_what_it_is() -> None:
    for package in ("runtime", "serve", "corpus", "cli", "export", "bench"):
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
