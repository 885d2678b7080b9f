"""The thin command line: `glipv2 models` and `glipv2 demo`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_config

import glipv2
from glipv2 import demo
from glipv2.cli import main


def test_models_lists_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    for name in glipv2.list_models():
        assert name in printed


def test_demo_runs_the_tiny_preset_without_weights(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "SHIPPED_WEIGHTS", tmp_path / "none")
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


def test_demo_with_weights_writes_detection_and_grounding(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = glipv2.GLIPv2(make_tiny_config(pad_to_max_query_len=False, test_min_size=64, test_max_size=96))
    weights = model.save_pretrained(tmp_path / "weights")
    out = tmp_path / "out"
    assert main(["demo", "--weights", str(weights), "--out", str(out)]) == 0
    detection = json.loads((out / "detection.json").read_text())
    assert len(detection["images"]) == 4 and len(detection["labels"]) == 36
    assert sorted(p.name for p in (out / "detection").glob("*.png")) == [
        f"val_00000{i}.png" for i in range(4)
    ]
    assert (
        len(list((out / "grounding").glob("*.json"))) == 4
        and len(list((out / "grounding").glob("*.png"))) == 4
    )
    printed = capsys.readouterr().out
    assert printed.count("ground truth:") == 4 and "caption:" in printed


def test_demo_with_a_multi_task_model_asks_and_describes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, understanding_model_dir: Path
) -> None:
    out = tmp_path / "out"
    assert main(["demo", "--weights", str(understanding_model_dir), "--out", str(out)]) == 0
    answers = sorted((out / "vqa").glob("*.json"))
    assert len(answers) == 4 and len(list((out / "vqa").glob("*.png"))) == 4
    asked = [json.loads(a.read_text()) for a in answers]
    assert all(len(d["images"][0]["answers"]) == 3 for d in asked)
    captions = json.loads((out / "captions.json").read_text())["images"]
    assert len(captions) == 4 and all(c["generated_caption"] for c in captions)
    printed = capsys.readouterr().out
    assert printed.count("asked:") == 4 and printed.count("generated:") == 4
    assert "detection, grounding, VQA, captioning" in printed
