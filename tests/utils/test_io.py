"""Atomic writes and JSON reading (glipv2.utils.io)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from glipv2.utils.io import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
    temporary_sibling,
)

DOCUMENT = {"b": [1, 2.5, None], "a": "é"}


@pytest.mark.parametrize(
    ("kwargs", "end"),
    [({"indent": 1}, ""), ({"indent": 1}, "\n"), ({"sort_keys": True, "separators": (",", ":")}, "\n")],
)
def test_json_is_written_with_the_callers_formatting(tmp_path: Path, kwargs: dict, end: str) -> None:
    path = atomic_write_json(tmp_path / "out.json", DOCUMENT, end=end, **kwargs)
    assert path.read_bytes() == (json.dumps(DOCUMENT, **kwargs) + end).encode()
    assert json.loads(path.read_text()) == DOCUMENT


def test_the_parent_folder_is_created_and_an_old_file_replaced(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(path, "old\n")
    atomic_write_text(path, "new\nline\n")
    assert path.read_bytes() == b"new\nline\n"  # "\n" as is, on every platform
    atomic_write_bytes(path, b"\x00\xff")
    assert path.read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    atomic_write_json(path, {"old": True})
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(path) as tmp:
        tmp.write_text('{"half": ')
        raise RuntimeError("disk full")
    with pytest.raises(TypeError):
        atomic_write_json(path, {"not json": object()})
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_rename_removes_the_temporary_file(tmp_path: Path) -> None:
    folder = tmp_path / "taken"
    (folder / "inside").mkdir(parents=True)  # a non-empty folder where the file should go
    with pytest.raises(OSError):
        atomic_write_text(folder, "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_temporary_names_are_hidden_unique_and_beside_the_file(tmp_path: Path) -> None:
    names = {temporary_sibling(tmp_path / "out.json") for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert name.parent == tmp_path and name.name.startswith(f".out.json.{os.getpid()}.")
        assert name.suffix == ".tmp"


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not tempfile's 0600


def test_read_json_reads_json_in_any_json_encoding(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    for data in (
        json.dumps(DOCUMENT).encode(),
        b"\xef\xbb\xbf" + json.dumps(DOCUMENT).encode(),
        json.dumps(DOCUMENT, ensure_ascii=False).encode("utf-16"),
    ):
        path.write_bytes(data)
        assert read_json(path, "annotation") == DOCUMENT


def test_read_json_errors_are_one_line_and_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing.json: no such annotation file$"):
        read_json(tmp_path / "missing.json", "annotation")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken.json: prompt file is not a JSON file \("):
        read_json(tmp_path / "broken.json", "prompt")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(ValueError, match="binary.json: predictions file is not a JSON file"):
        read_json(tmp_path / "binary.json", "predictions")
    with pytest.raises(ValueError, match=r": cannot read the annotation file \("):
        read_json(tmp_path, "annotation")  # a folder
