"""The shipped weights (`weights/glipv2_tiny_shapes`, written by `scripts/train_tiny_shapes.sh`): they
come from the committed recipe, fit the size limit, and detect the objects of fresh ShapesWorld images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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
