"""`reuse_freed_memory`: applied on glibc, a no-op elsewhere, and called by the commands."""

from __future__ import annotations

import ctypes.util
import platform
import sys
from pathlib import Path

import pytest

from glipv2.cli import main
from glipv2.inference import command as predict_command
from glipv2.utils import allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_applies_on_glibc_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_applied", False)
    assert allocator.reuse_freed_memory() is True
    assert allocator.reuse_freed_memory() is True  # again: nothing more to do


def test_left_alone_off_linux_and_without_mallopt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.reuse_freed_memory() is False
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes.util, "find_library", lambda _name: "/nonexistent/libc.so")
    assert allocator.reuse_freed_memory() is False


def test_predict_applies_it(
    fixture_model_dir: Path, fixture_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(predict_command, "reuse_freed_memory", lambda: calls.append(True) or True)
    args = ["predict", str(fixture_dir / "input.png"), "--model", str(fixture_model_dir)]
    code = main([*args, "--classes", "circle", "--out", str(tmp_path / "o.json"), "-q"])
    assert code == 0 and calls == [True]
