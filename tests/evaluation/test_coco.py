"""COCO box AP: perfect predictions score 1, others exactly what pycocotools computes directly."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from glipv2 import Detections
from glipv2.evaluation import COCOEvaluator
from glipv2.evaluation.base import EvalSample

GT = {
    "images": [{"id": 1, "width": 100, "height": 80, "file_name": "a.png"},
               {"id": 2, "width": 100, "height": 80, "file_name": "b.png"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 40, 40, 30], "area": 1200, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 60, 60], "area": 3600, "iscrowd": 0},
    ],
    "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
}


def legacy_xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w - 1, y + h - 1]


def detections(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Detections:
    return Detections(torch.tensor(boxes).reshape(-1, 4), torch.tensor(scores), torch.tensor(labels),
                      ["cat", "dog"], (80, 100))


def samples(*image_ids: int) -> list[EvalSample]:
    return [EvalSample(Path(f"{i}.png"), i, classes=("cat", "dog")) for i in image_ids]


@pytest.fixture
def ann_file(tmp_path: Path) -> Path:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(GT))
    return path


def test_ground_truth_as_predictions_gives_ap_1(ann_file: Path) -> None:
    evaluator = COCOEvaluator(ann_file, [3, 7])
    evaluator.process(samples(1, 2), [
        detections([legacy_xyxy(GT["annotations"][0]["bbox"]), legacy_xyxy(GT["annotations"][1]["bbox"])],
                   [0.9, 0.8], [0, 1]),
        detections([legacy_xyxy(GT["annotations"][2]["bbox"])], [0.7], [0]),
    ])
    metrics = evaluator.evaluate()["bbox"]
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)


def test_matches_pycocotools_called_directly(ann_file: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    boxes1 = [[12, 9, 41, 31], [48, 42, 85, 66], [0, 0, 20, 20]]
    boxes2 = [[5, 5, 50, 58]]
    evaluator = COCOEvaluator(ann_file, [3, 7])
    evaluator.process(samples(1, 2), [detections(boxes1, [0.9, 0.6, 0.3], [0, 1, 1]), detections(boxes2, [0.5], [0])])
    ours = evaluator.evaluate()["bbox"]
    results = evaluator.results
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        direct = COCOeval(gt, gt.loadRes(results), "bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    assert ours["AP"] == pytest.approx(float(direct.stats[0])) and ours["AP50"] == pytest.approx(float(direct.stats[1]))
    assert 0 < ours["AP"] < 1
    assert results[0]["bbox"] == [12, 9, 30, 23]  # legacy +1 size: x2 - x1 + 1


def test_no_predictions_is_zero_and_unknown_categories_are_an_error(ann_file: Path) -> None:
    evaluator = COCOEvaluator(ann_file, [3, 7])
    evaluator.process(samples(1), [detections([], [], [])])
    assert evaluator.evaluate()["bbox"]["AP"] == 0.0
    with pytest.raises(ValueError, match="unknown category ids"):
        COCOEvaluator(ann_file, [3, 99])


def test_figures_without_ground_truth_are_none(ann_file: Path) -> None:
    evaluator = COCOEvaluator(ann_file, [3, 7])
    evaluator.process(samples(1), [detections([[12, 9, 41, 31]], [0.9], [0])])
    metrics = evaluator.evaluate()["bbox"]
    assert metrics["APl"] is None  # no ground-truth box is larger than 96² pixels
    assert metrics["AP"] is not None and 0 <= metrics["AP"] <= 1
