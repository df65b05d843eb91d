"""The torch boundary and the package layout.

embedrt.runtime must work where torch, transformers, optimum and onnx cannot be imported,
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
