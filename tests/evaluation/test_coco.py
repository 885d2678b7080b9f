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
from glipv2.evaluation.coco import STAT_NAMES, coco_benchmark

GT = {
    "images": [
        {"id": 1, "width": 100, "height": 80, "file_name": "a.png"},
        {"id": 2, "width": 100, "height": 80, "file_name": "b.png"},
    ],
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
    return Detections(
        torch.tensor(boxes).reshape(-1, 4),
        torch.tensor(scores),
        torch.tensor(labels),
        ["cat", "dog"],
        (80, 100),
    )


def samples(*image_ids: int) -> list[EvalSample]:
    return [EvalSample(Path(f"{i}.png"), i, classes=("cat", "dog")) for i in image_ids]


@pytest.fixture
def ann_file(tmp_path: Path) -> Path:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(GT))
    return path


def test_ground_truth_as_predictions_gives_ap_1(ann_file: Path) -> None:
    evaluator = COCOEvaluator(ann_file, [3, 7])
    evaluator.process(
        samples(1, 2),
        [
            detections(
                [legacy_xyxy(GT["annotations"][0]["bbox"]), legacy_xyxy(GT["annotations"][1]["bbox"])],
                [0.9, 0.8],
                [0, 1],
            ),
            detections([legacy_xyxy(GT["annotations"][2]["bbox"])], [0.7], [0]),
        ],
    )
    metrics = evaluator.evaluate()["bbox"]
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)


def test_matches_pycocotools_called_directly(ann_file: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    boxes1 = [[12, 9, 41, 31], [48, 42, 85, 66], [0, 0, 20, 20]]
    boxes2 = [[5, 5, 50, 58]]
    evaluator = COCOEvaluator(ann_file, [3, 7])
    evaluator.process(
        samples(1, 2), [detections(boxes1, [0.9, 0.6, 0.3], [0, 1, 1]), detections(boxes2, [0.5], [0])]
    )
    ours = evaluator.evaluate()["bbox"]
    # written by hand: label 0 -> category 3, label 1 -> category 7; [x, y, x2 - x1 + 1, y2 - y1 + 1]
    expected = [
        {"image_id": 1, "category_id": 3, "bbox": [12, 9, 30, 23], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [48, 42, 38, 25], "score": 0.6},
        {"image_id": 1, "category_id": 7, "bbox": [0, 0, 21, 21], "score": 0.3},
        {"image_id": 2, "category_id": 3, "bbox": [5, 5, 46, 54], "score": 0.5},
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        direct = COCOeval(gt, gt.loadRes(expected), "bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    assert list(ours) == list(STAT_NAMES)
    for name, value in zip(STAT_NAMES, direct.stats):
        assert ours[name] == (None if value == -1 else pytest.approx(float(value))), name
    assert 0 < ours["AP"] < 1 and ours["APl"] is None  # not trivially 0 / 1; -1 came out as None


def test_predictions_are_left_as_results_entries(ann_file: Path) -> None:
    # pycocotools' loadRes adds segmentation / area / id / iscrowd to what it is given; the
    # predictions file must hold the entries as they were
    evaluator = COCOEvaluator(ann_file, [3, 7])
    evaluator.process(
        samples(1, 2), [detections([[12, 9, 41, 31]], [0.9], [0]), detections([[5, 5, 50, 58]], [0.5], [0])]
    )
    evaluator.evaluate()
    predictions = evaluator.predictions()
    assert len(predictions) == 2
    assert all(set(p) == {"image_id", "category_id", "bbox", "score"} for p in predictions)


def test_no_predictions_is_zero_where_defined_and_unknown_categories_are_an_error(ann_file: Path) -> None:
    evaluator = COCOEvaluator(ann_file, [3, 7])
    evaluator.process(samples(1, 2), [detections([], [], []), detections([], [], [])])
    metrics = evaluator.evaluate()["bbox"]
    # the ground truth has small (600), medium (1200, 3600) but no large (> 96²) boxes
    assert metrics == {**dict.fromkeys(STAT_NAMES, 0.0), "APl": None}
    with pytest.raises(ValueError, match="unknown category ids"):
        COCOEvaluator(ann_file, [3, 99])


def test_figures_without_ground_truth_are_none(ann_file: Path) -> None:
    evaluator = COCOEvaluator(ann_file, [3, 7])
    evaluator.process(samples(1), [detections([[12, 9, 41, 31]], [0.9], [0])])
    metrics = evaluator.evaluate()["bbox"]
    assert metrics["APl"] is None  # no ground-truth box is larger than 96² pixels
    assert metrics["AP"] is not None and 0 <= metrics["AP"] <= 1


def test_annotations_without_area_and_iscrowd_are_filled_in(tmp_path: Path) -> None:
    # COCOeval reads both (area ranges, crowd matching); w * h and 0 are what loadRes gives boxes
    bare = {
        **GT,
        "annotations": [
            {k: v for k, v in a.items() if k not in ("area", "iscrowd")} for a in GT["annotations"]
        ],
    }
    path = tmp_path / "bare.json"
    path.write_text(json.dumps(bare))
    evaluator = COCOEvaluator(path, [3, 7])
    assert [(a["area"], a["iscrowd"]) for a in evaluator.coco.dataset["annotations"]] == [
        (600, 0),
        (1200, 0),
        (3600, 0),
    ]
    evaluator.process(
        samples(1, 2),
        [
            detections(
                [legacy_xyxy(GT["annotations"][0]["bbox"]), legacy_xyxy(GT["annotations"][1]["bbox"])],
                [0.9, 0.8],
                [0, 1],
            ),
            detections([legacy_xyxy(GT["annotations"][2]["bbox"])], [0.7], [0]),
        ],
    )
    metrics = evaluator.evaluate()["bbox"]
    assert metrics["AP"] == pytest.approx(1.0) and metrics["APs"] == pytest.approx(1.0)


def _with(key: str, index: int, **changes: object) -> dict[str, object]:
    entries = [dict(e) for e in GT[key]]
    entries[index].update(changes)
    return {**GT, key: entries}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with("images", 0, id="1"), "images entry 0: id must be an integer"),
        (_with("categories", 1, id=True), "categories entry 1: id must be an integer"),
        (_with("annotations", 2, id=[3]), "annotations entry 2: id must be an integer"),
        (_with("annotations", 0, image_id=1.0), "annotations entry 0: image_id must be an integer"),
        (_with("annotations", 1, category_id=None), "annotations entry 1: category_id must be an integer"),
        (
            _with("annotations", 0, bbox=[1, 2, 3]),
            r"annotations entry 0: bbox must be \[x, y, width, height\]",
        ),
        (_with("annotations", 0, bbox=[1, 2, 3, float("nan")]), "annotations entry 0: bbox must be"),
        (_with("annotations", 0, bbox=[1, 2, 3, "4"]), "annotations entry 0: bbox must be"),
        (_with("annotations", 1, image_id=5), "annotations entry 1: image_id 5 is not an image"),
        (_with("annotations", 2, category_id=4), "annotations entry 2: category_id 4 is not a category"),
        (_with("images", 1, file_name=None), "image entries need a file_name"),
        ({**GT, "images": [GT["images"][0], {"id": 2}]}, "image entries need a file_name"),
    ],
)
def test_malformed_annotation_files_are_one_line_errors(
    tmp_path: Path, data: dict[str, object], message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as error:
        coco_benchmark(path, tmp_path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_detections_with_masks_get_mask_ap_too(tmp_path: Path) -> None:
    """Ground truth with polygons; predicted boxes exact, masks exact for one object and a quarter
    of the other: box AP 1, mask AP50 = 1/2 (one category each) — the quarter mask has IoU 0.25."""
    gt = json.loads(json.dumps(GT))
    gt["annotations"] = gt["annotations"][:2]
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    masks = torch.zeros(2, 80, 100, dtype=torch.bool)
    masks[0, 10:30, 10:40] = True  # the first box's pixels
    masks[1, 40:55, 50:70] = True  # a quarter of the second
    dets = detections([legacy_xyxy(a["bbox"]) for a in gt["annotations"]], [0.9, 0.8], [0, 1])
    dets.masks = masks
    evaluator = COCOEvaluator(path, [3, 7])
    evaluator.process(samples(1), [dets])
    metrics = evaluator.evaluate()
    assert metrics["bbox"]["AP50"] == pytest.approx(1.0)
    assert metrics["segm"]["AP50"] == pytest.approx(0.5)
    # without masks in the detections there is no mask AP
    evaluator = COCOEvaluator(path, [3, 7])
    evaluator.process(
        samples(1), [detections([legacy_xyxy(a["bbox"]) for a in gt["annotations"]], [0.9, 0.8], [0, 1])]
    )
    assert set(evaluator.evaluate()) == {"bbox"}
