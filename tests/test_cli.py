"""The thin command line: `glipv2 models` and `glipv2 demo`."""

from __future__ import annotations

import pytest

import glipv2
from glipv2.cli import main


def test_models_lists_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    for name in glipv2.list_models():
        assert name in printed


def test_demo_runs_the_tiny_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    printed = capsys.readouterr().out
    assert "glipv2_tiny" in printed
    for phrase in ("red circle", "blue square", "green triangle"):
        assert phrase in printed
    assert "P7: region-word logits (1, 4, 11)" in printed  # 256 px input, 11-token prompt


def test_unknown_command_exits_with_usage() -> None:
    with pytest.raises(SystemExit) as err:
        main(["frobnicate"])
    assert err.value.code == 2
