"""ODinW-style folders: one benchmark per COCO json with its own prompt, per-dataset AP and the
average, and one clear error for every malformed input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from glipv2 import Detections
from glipv2.evaluation.odinw import odinw_benchmarks, odinw_summary

AQUARIUM: dict[str, Any] = {
    "images": [
        {"id": 1, "width": 100, "height": 80, "file_name": "a.jpg"},
        {"id": 2, "width": 100, "height": 80, "file_name": "b.jpg"},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 40, 40, 30], "area": 1200, "iscrowd": 0},
    ],
    "categories": [{"id": 2, "name": "shark"}, {"id": 1, "name": "fish_(small)"}],
}
DRONE: dict[str, Any] = {
    "images": [{"id": 7, "width": 100, "height": 80, "file_name": "d.jpg"}],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 0, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 3, "bbox": [60, 40, 30, 30], "area": 900, "iscrowd": 0},
    ],
    "categories": [{"id": 3, "name": "car"}, {"id": 0, "name": "boat"}, {"id": 5, "name": "dock"}],
}
DRONE_PROMPT = {
    "prefix": "a ",
    "names": {"boat": "small boat"},
    "categories": {"car": {"prefix": "", "suffix": " on the road"}},
}


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """aquarium: images beside the json, class prompt; drone: images in images/, a prompt file;
    plus a JSON file that is not a dataset."""
    write(tmp_path / "aquarium" / "valid" / "annotations.json", AQUARIUM)
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "aquarium" / "valid" / name).write_bytes(b"")
    drone = tmp_path / "drone" / "large" / "test"
    write(drone / "_annotations.coco.json", DRONE)
    write(drone / "_annotations.coco.prompt.json", DRONE_PROMPT)
    (drone / "images").mkdir()
    (drone / "images" / "d.jpg").write_bytes(b"")
    write(tmp_path / "drone" / "metadata.json", {"source": "roboflow"})
    return tmp_path


def dets(boxes: list[list[float]], scores: list[float], labels: list[int], names: int) -> Detections:
    return Detections(
        torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
        torch.tensor(scores, dtype=torch.float64),
        torch.tensor(labels, dtype=torch.long),
        [f"n{i}" for i in range(names)],
        (80, 100),
    )


def legacy_xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w - 1, y + h - 1]  # COCO path: the official +1 box size


def test_benchmarks_names_prompts_and_images(root: Path) -> None:
    aquarium, drone = odinw_benchmarks(root)
    assert [aquarium.name, drone.name] == ["aquarium/valid/annotations", "drone/large/test/_annotations.coco"]

    assert aquarium.samples[0].classes == ("fish", "shark")  # sorted by id, cleaned
    assert aquarium.samples[0].caption is None
    assert [s.image for s in aquarium.samples] == [
        root / "aquarium/valid/a.jpg",
        root / "aquarium/valid/b.jpg",
    ]
    assert aquarium.evaluator.category_ids == [1, 2]

    sample = drone.samples[0]
    assert sample.classes is None and sample.image == root / "drone/large/test/images/d.jpg"
    assert sample.caption == "a small boat. car on the road. a dock"
    assert sample.spans is not None
    assert [sample.caption[s:e] for ((s, e),) in sample.spans] == ["small boat", "car", "dock"]
    assert drone.evaluator.category_ids == [0, 3, 5]
    for benchmark in (aquarium, drone):
        benchmark.check_images()


def test_per_dataset_ap_and_average(root: Path) -> None:
    aquarium, drone = odinw_benchmarks(root, distributed=False)
    # aquarium: both objects found -> AP 1
    aquarium.evaluator.process(
        aquarium.samples,
        [
            dets([legacy_xyxy(AQUARIUM["annotations"][0]["bbox"])], [0.9], [1], 2),
            dets([legacy_xyxy(AQUARIUM["annotations"][1]["bbox"])], [0.8], [0], 2),
        ],
    )
    # drone: the boat (label 0) found, the car (label 1) boxed in the wrong place -> AP 1/2
    drone.evaluator.process(
        drone.samples,
        [
            dets([legacy_xyxy(DRONE["annotations"][0]["bbox"]), [0, 50, 20, 79]], [0.9, 0.7], [0, 1], 3),
        ],
    )
    per_dataset = {b.name: b.evaluator.evaluate() for b in (aquarium, drone)}
    assert per_dataset[aquarium.name]["bbox"]["AP"] == pytest.approx(1.0)
    assert per_dataset[drone.name]["bbox"]["AP"] == pytest.approx(0.5)
    assert drone.evaluator.results[0]["category_id"] == 0 and drone.evaluator.results[1]["category_id"] == 3

    summary = odinw_summary(per_dataset)
    assert summary["datasets"] == per_dataset
    assert summary["average"] == {"AP": pytest.approx(0.75), "AP50": pytest.approx(0.75)}


def test_summary_is_none_safe() -> None:
    summary = odinw_summary(
        {"a": {"bbox": {"AP": 0.4, "AP50": None}}, "b": {"bbox": {"AP": None, "AP50": 0.6}}, "c": {}}
    )
    assert summary["average"] == {"AP": pytest.approx(0.4), "AP50": pytest.approx(0.6)}
    assert odinw_summary({})["average"] == {"AP": None, "AP50": None}


def test_empty_predictions_score_zero(root: Path) -> None:
    aquarium, _ = odinw_benchmarks(root)
    aquarium.evaluator.process(aquarium.samples, [dets([], [], [], 2), dets([], [], [], 2)])
    assert aquarium.evaluator.evaluate()["bbox"]["AP"] == 0.0


def test_shared_prompt_file_and_a_single_json(tmp_path: Path) -> None:
    ann = write(tmp_path / "set" / "test.json", DRONE)
    write(tmp_path / "set" / "prompt.json", {"suffix": " seen from above"})
    [benchmark] = odinw_benchmarks(ann)
    assert benchmark.name == "test"
    assert benchmark.samples[0].caption == "boat seen from above. car seen from above. dock seen from above"


def test_unknown_category_names_in_a_prompt_file(root: Path) -> None:
    write(root / "drone/large/test/_annotations.coco.prompt.json", {"names": {"boat": "b", "plane": "p"}})
    with pytest.raises(ValueError, match=r"names: unknown category names \['plane'\]"):
        odinw_benchmarks(root)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "prompt file is not a JSON file"),
        (json.dumps(["prefix"]), "a prompt file is a JSON object"),
        (json.dumps({"prefixes": "a "}), r"unknown keys \['prefixes'\]"),
        (json.dumps({"prefix": 3}), "prefix must be a string"),
        (json.dumps({"names": {"car": ""}}), r"names\['car'\] is empty"),
        (json.dumps({"categories": {"car": {"before": "x"}}}), r"categories\['car'\] must be"),
    ],
)
def test_unreadable_prompt_files(root: Path, content: str, message: str) -> None:
    (root / "drone/large/test/_annotations.coco.prompt.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        odinw_benchmarks(root)


def test_missing_root_and_no_datasets(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        odinw_benchmarks(tmp_path / "nowhere")
    write(tmp_path / "prompt.json", {"prefix": "a "})
    write(tmp_path / "other.json", [1, 2])
    with pytest.raises(ValueError, match="no COCO instances json"):
        odinw_benchmarks(tmp_path)


def test_broken_annotation_json_and_missing_images(root: Path) -> None:
    (root / "aquarium/valid/a.jpg").unlink()
    aquarium, _ = odinw_benchmarks(root)
    with pytest.raises(FileNotFoundError, match="1 of 2 images"):
        aquarium.check_images()
    (root / "aquarium/valid/broken.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json: annotation file is not a JSON file"):
        odinw_benchmarks(root)


def test_malformed_entries_are_named(root: Path) -> None:
    write(root / "aquarium/valid/annotations.json", {**AQUARIUM, "categories": [{"id": 1}]})
    with pytest.raises(ValueError, match="categories entry 0 lacks name"):
        odinw_benchmarks(root)


def test_annotations_naming_no_image_of_the_file_are_named(root: Path) -> None:
    stray = {
        **AQUARIUM,
        "annotations": [*AQUARIUM["annotations"], {**AQUARIUM["annotations"][0], "id": 3, "image_id": 9}],
    }
    write(root / "aquarium/valid/annotations.json", stray)
    with pytest.raises(ValueError, match="annotations entry 2: image_id 9 is not an image of the file"):
        odinw_benchmarks(root)


def test_predictions_with_unknown_ids_are_named(root: Path) -> None:
    aquarium, _ = odinw_benchmarks(root)
    entry = {"image_id": 1, "category_id": 9, "bbox": [0, 0, 5, 5], "score": 0.5}
    with pytest.raises(ValueError, match=r"category ids not in the annotations: \[9\]"):
        aquarium.evaluator.add_results([entry])
