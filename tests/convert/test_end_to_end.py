"""Official checkpoint to official detections, from the shell: `glipv2 convert` of the parity
fixture's `.pth` with its full yacs config, then `glipv2 predict` on its input image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from glipv2.cli import main
from glipv2.modeling.config import COMPUTE_PATHS

# about three times the largest difference measured on this CPU (boxes 3.1e-5, scores 2.4e-7) plus the
# JSON's rounding (boxes to 4 decimals, scores to 6); FIXTURE.md allows 1e-3 and 1e-5
BOX_ATOL, SCORE_ATOL = 2e-4, 2e-6

CAPTION = "red circle. blue square. green triangle."
PHRASES = ["red circle", "blue square", "green triangle"]


@pytest.mark.parametrize("compute_path", ["fast", "reference"])
def test_convert_then_predict_gives_the_official_detections(
    fixture_dir: Path, tmp_path: Path, fixture_outputs: dict[str, Any], compute_path: str
) -> None:
    """On either compute path (the converter writes the fast one; the reference one is set in the
    saved config.json, as a user would)."""
    model_dir = tmp_path / "glip_tiny"
    # the YAML names bert-base-uncased; the fixture's BERT is a tiny one, given beside it
    assert (
        main(
            [
                "convert",
                str(fixture_dir / "glip_tiny_random.pth"),
                str(model_dir),
                "--official-config",
                str(fixture_dir / "config_full.yaml"),
                "--text-config",
                str(fixture_dir / "tiny_bert_config.json"),
            ]
        )
        == 0
    )
    config_file = model_dir / "config.json"
    config = json.loads(config_file.read_text())
    assert {k: config[k] for k in COMPUTE_PATHS["fast"]} == COMPUTE_PATHS["fast"]
    config_file.write_text(json.dumps(config | COMPUTE_PATHS[compute_path]))
    results = tmp_path / "results.json"
    assert (
        main(
            [
                "predict",
                str(fixture_dir / "input.png"),
                "--model",
                str(model_dir),
                "--no-resize",
                "--caption",
                CAPTION,
                "--phrases",
                *PHRASES,
                "--threshold",
                "0",
                "--out",
                str(results),
            ]
        )
        == 0
    )
    [entry] = json.loads(results.read_text())["images"]
    detections = entry["detections"]
    assert len(detections) == len(fixture_outputs["scores"]) == 100
    assert [d["label_index"] + 1 for d in detections] == fixture_outputs["labels"].tolist()
    torch.testing.assert_close(
        torch.tensor([d["box_xyxy"] for d in detections]), fixture_outputs["boxes"], atol=BOX_ATOL, rtol=0
    )
    torch.testing.assert_close(
        torch.tensor([d["score"] for d in detections]), fixture_outputs["scores"], atol=SCORE_ATOL, rtol=0
    )
