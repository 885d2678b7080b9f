"""The shipped weights (`weights/glipv2_tiny_shapes`, written by `scripts/train_tiny_shapes.sh`): they
come from the committed recipe, fit the size limit, and detect the objects of fresh ShapesWorld images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from glipv2.data.shapes_world import generate_shapes_world
from glipv2.evaluation.coco import evaluate_detection
from glipv2.inference.predictor import Predictor
from glipv2.loading import load_model

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "weights" / "glipv2_tiny_shapes"
RECIPE = REPO / "configs" / "glipv2_tiny_shapes.yaml"

pytestmark = pytest.mark.skipif(
    not (SHIPPED / "config.json").is_file(), reason="no shipped weights in this checkout"
)


def test_shipped_weights_follow_the_committed_recipe() -> None:
    saved = json.loads((SHIPPED / "config.json").read_text())
    overrides = yaml.safe_load(RECIPE.read_text())["model_overrides"]
    assert {k: saved[k] for k in overrides} == overrides


def test_shipped_weights_fit_in_40_mb() -> None:
    assert sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) <= 40 * 2**20


def test_shipped_weights_detect_shapes_on_fresh_val_images(tmp_path: Path) -> None:
    # the first 12 images of the split the script scores (seed 101); random detection weights score ~0
    generate_shapes_world(tmp_path, 12, 101, split="val")
    model = load_model(str(SHIPPED)).eval()
    metrics = evaluate_detection(
        Predictor(model), tmp_path / "instances.json", tmp_path / "images", progress=False
    )
    assert metrics["bbox"]["AP50"] >= 0.5


def test_shipped_weights_give_the_detections_recorded_before_the_core_heads_layout(tmp_path: Path) -> None:
    """`shipped_weights_detections.json` was recorded with the code before the core + heads refactor
    (commit 78570c9: flat state-dict layout, the model owning the tokenizer) on the first 3 ShapesWorld
    val images of seed 123: detection of 6 names and the grounding of one caption, threshold 0.1, masks
    included. The weights folder is still in the old layout, so this also checks that it loads as is."""
    from glipv2 import Predictor

    reference = json.loads((Path(__file__).parent / "shipped_weights_detections.json").read_text())
    generate_shapes_world(tmp_path, 3, 123, split="val")
    predictor = Predictor(load_model(str(SHIPPED)))
    names = ["red circle", "blue square", "green triangle", "yellow star", "purple hexagon", "orange cross"]
    seen = []
    for image in sorted((tmp_path / "images").glob("*.png")):
        for task, found in (
            ("detect", predictor.detect(str(image), names, threshold=0.1)),
            ("ground", predictor.ground(str(image), "a red circle and a blue square", threshold=0.1)),
        ):
            seen.append((image.name, task, found))
    assert [(name, task) for name, task, _ in seen] == [(r["image"], r["task"]) for r in reference]
    assert sum(len(r["scores"]) for r in reference) == 40
    for (_, _, found), expected in zip(seen, reference):
        assert found.labels.tolist() == expected["labels"]
        boxes = torch.tensor(expected["boxes"]).reshape(-1, 4)
        torch.testing.assert_close(found.boxes, boxes, atol=1e-3, rtol=0)  # stored to 4 decimals
        torch.testing.assert_close(found.scores, torch.tensor(expected["scores"]), atol=1e-5, rtol=0)
        assert [int(m.sum()) for m in found.masks] == expected["mask_pixels"]
