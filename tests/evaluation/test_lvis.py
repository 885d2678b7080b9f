"""LVIS: standard AP and FixedAP equal faster-coco-eval on the correspondingly capped results,
perfect predictions score 1, the caps act where they should, chunked labels map back to the
right category ids, and bad inputs are one clear error."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from glipv2 import Detections
from glipv2.evaluation.base import EvalSample
from glipv2.evaluation.lvis import LVISEvaluator, lvis_benchmark, lvis_image_path
from glipv2.processing.postprocess import RawDetections

# Three images, categories of every frequency, objects of every size; image 1 verified free of
# zebras (neg), image 2 of bears, image 3 of aerosol cans; image 2 not exhaustively annotated
# for aerosol cans.
GT: dict[str, Any] = {
    "images": [
        {
            "id": 1,
            "width": 100,
            "height": 80,
            "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg",
            "neg_category_ids": [9],
            "not_exhaustive_category_ids": [],
        },
        {
            "id": 2,
            "width": 100,
            "height": 80,
            "coco_url": "http://images.cocodataset.org/train2017/000000000002.jpg",
            "neg_category_ids": [5],
            "not_exhaustive_category_ids": [1],
        },
        {
            "id": 3,
            "width": 120,
            "height": 110,
            "file_name": "three.jpg",
            "neg_category_ids": [1],
            "not_exhaustive_category_ids": [],
        },
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20], "area": 600},
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [50, 40, 40, 30], "area": 1200},
        {"id": 3, "image_id": 2, "category_id": 9, "bbox": [0, 0, 60, 60], "area": 3600},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [70, 5, 10, 10], "area": 100},
        {"id": 5, "image_id": 3, "category_id": 12, "bbox": [0, 0, 110, 100], "area": 11000},
    ],
    "categories": [
        {"id": 12, "name": "apple", "frequency": "f"},
        {"id": 1, "name": "aerosol_can", "frequency": "f"},
        {"id": 5, "name": "bear_(animal)", "frequency": "c"},
        {"id": 9, "name": "zebra", "frequency": "r"},
    ],
}
CATEGORY_IDS = [1, 5, 9, 12]  # the benchmark's label order: sorted by id


def xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def detections(boxes: list[list[float]], scores: list[float], category_ids: list[int]) -> Detections:
    order = torch.tensor(scores).argsort(descending=True)
    labels = torch.tensor([CATEGORY_IDS.index(c) for c in category_ids], dtype=torch.long)
    return Detections(
        torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)[order],
        torch.tensor(scores)[order],
        labels[order],
        ["aerosol can", "bear", "zebra", "apple"],
        (80, 100),
    )


def sample(image_id: int) -> EvalSample:
    return EvalSample(Path(f"{image_id}.jpg"), image_id, classes=("aerosol can", "bear", "zebra", "apple"))


@pytest.fixture
def ann_file(tmp_path: Path) -> Path:
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(GT))
    return path


def ground_truth_detections() -> dict[int, Detections]:
    by_image: dict[int, list[dict[str, Any]]] = {1: [], 2: [], 3: []}
    for ann in GT["annotations"]:
        by_image[ann["image_id"]].append(ann)
    return {
        i: detections(
            [xyxy(a["bbox"]) for a in anns],
            [0.9 - 0.1 * k for k in range(len(anns))],
            [a["category_id"] for a in anns],
        )
        for i, anns in by_image.items()
    }


def imperfect_detections() -> dict[int, Detections]:
    """Hits, shifted hits, false positives on verified and unverified categories, distinct scores."""
    return {
        1: detections(
            [[11, 9, 41, 31], [48, 42, 88, 70], [0, 0, 20, 20], [60, 50, 90, 70], [5, 5, 25, 25]],
            [0.95, 0.6, 0.55, 0.5, 0.3],
            [1, 5, 5, 9, 12],
        ),
        2: detections(
            [[2, 1, 58, 62], [70, 5, 80, 15], [30, 30, 50, 50], [0, 0, 10, 10]],
            [0.8, 0.45, 0.7, 0.2],
            [9, 1, 1, 5],
        ),
        3: detections([[0, 0, 100, 100], [10, 10, 60, 60], [0, 0, 110, 100]], [0.65, 0.4, 0.35], [12, 12, 1]),
    }


def run(evaluator: LVISEvaluator, per_image: dict[int, Detections]) -> dict[str, Any]:
    evaluator.process([sample(i) for i in per_image], list(per_image.values()))
    return evaluator.evaluate()


def direct(ann_file: Path, results: list[dict[str, Any]], max_dets: int) -> dict[str, float]:
    """faster-coco-eval called as its documentation shows, on results capped by the caller."""
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(str(ann_file))
    evaluation = COCOeval_faster(
        gt,
        gt.loadRes([dict(r) for r in results]),
        "bbox",
        lvis_style=True,
        print_function=lambda *a, **k: None,
    )
    evaluation.params.maxDets = [max_dets]
    evaluation.run()
    return evaluation.stats_as_dict


def assert_matches_direct(ours: dict[str, Any], standard: dict[str, Any], fixed: dict[str, Any]) -> None:
    """Our standard and fixed AP figures equal faster-coco-eval's, run directly on the results."""
    for name, key in (
        ("AP", "AP_all"),
        ("AP50", "AP_50"),
        ("AP75", "AP_75"),
        ("APr", "APr"),
        ("APc", "APc"),
        ("APf", "APf"),
    ):
        assert ours["bbox"][name] == pytest.approx(standard[key]), name
        assert ours["bbox_fixed"][name] == pytest.approx(fixed[key]), name


def naive_top(results: list[dict[str, Any]], key: str, k: int) -> list[dict[str, Any]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r[key], []).append(r)
    return [r for g in groups.values() for r in sorted(g, key=lambda r: r["score"], reverse=True)[:k]]


def test_ground_truth_as_predictions_gives_ap_1(ann_file: Path) -> None:
    metrics = run(LVISEvaluator(ann_file), ground_truth_detections())
    for table in ("bbox", "bbox_fixed"):
        for name in ("AP", "AP50", "AP75", "APr", "APc", "APf"):
            assert metrics[table][name] == pytest.approx(1.0), (table, name)
    assert metrics["bbox"]["APs"] == metrics["bbox"]["APm"] == metrics["bbox"]["APl"] == pytest.approx(1.0)
    assert metrics["bbox"]["AR300"] == pytest.approx(1.0)
    assert set(metrics["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR300"}
    assert set(metrics["bbox_fixed"]) == {"AP", "AP50", "AP75", "APr", "APc", "APf"}


@pytest.mark.parametrize(("dets_per_image", "per_category"), [(300, 10_000), (2, 2)])
def test_both_figures_match_faster_coco_eval_on_capped_results(
    ann_file: Path, dets_per_image: int, per_category: int
) -> None:
    evaluator = LVISEvaluator(ann_file, dets_per_image=dets_per_image, fixed_dets_per_category=per_category)
    ours = run(evaluator, imperfect_detections())
    results = evaluator.results
    assert results[0]["bbox"] == [11, 9, 30, 22]  # official LVIS path: w = x2 - x1, no +1
    standard = direct(ann_file, naive_top(results, "image_id", dets_per_image), dets_per_image)
    fixed = direct(ann_file, naive_top(results, "category_id", per_category), 10**6)
    assert_matches_direct(ours, standard, fixed)
    assert ours["bbox"]["APs"] == pytest.approx(standard["AP_small"])
    assert ours["bbox"][f"AR{dets_per_image}"] == pytest.approx(standard["AR_all"])
    assert 0 < ours["bbox"]["AP"] < 1 and 0 < ours["bbox_fixed"]["AP"] < 1


def test_image_cap_changes_standard_ap_but_not_fixed_ap(ann_file: Path) -> None:
    # image 1: two confident false positives on verified categories rank above the two hits,
    # so a cap of 2 detections per image loses the hits
    per_image = ground_truth_detections()
    per_image[1] = detections(
        [[0, 60, 10, 70], [90, 0, 99, 10], *[xyxy(a["bbox"]) for a in GT["annotations"][:2]]],
        [0.99, 0.98, 0.5, 0.4],
        [1, 5, 1, 5],
    )
    capped = run(LVISEvaluator(ann_file, dets_per_image=2), per_image)
    uncapped = run(LVISEvaluator(ann_file, dets_per_image=300), per_image)
    assert capped["bbox"]["AP"] < uncapped["bbox"]["AP"] - 0.1
    assert capped["bbox_fixed"] == uncapped["bbox_fixed"]


def test_category_budget_changes_fixed_ap(ann_file: Path) -> None:
    # with a budget of 1 per category, the aerosol-can FP of image 3 displaces a hit
    small = run(LVISEvaluator(ann_file, fixed_dets_per_category=1), imperfect_detections())
    large = run(LVISEvaluator(ann_file), imperfect_detections())
    assert small["bbox_fixed"]["AP"] != pytest.approx(large["bbox_fixed"]["AP"])
    assert small["bbox"] == large["bbox"]


def test_compaction_is_exact(ann_file: Path) -> None:
    """Compacting after every image (dets_per_image 2, fixed_dets_per_category 2) keeps exactly the
    entries in their image's top 2 or their category's top 2, and both figures equal faster-coco-eval
    on the full, uncompacted results written out here by hand (plain [x, y, x2 - x1, y2 - y1]).

    (score, category) per image: 1: (.95, 1) (.6, 5) (.55, 5) (.5, 9) (.3, 12);
    2: (.8, 9) (.7, 1) (.45, 1) (.2, 5); 3: (.65, 12) (.4, 12) (.35, 1).
    After image 1 (5 entries) nothing can go yet (every entry is in a top 2); after image 3:
      image top 2:    .95 .6 | .8 .7 | .65 .4
      category top 2: 1: .95 .7; 5: .6 .55; 9: .8 .5; 12: .65 .4
    -> dropped: .3 (image 1, category 12), .45 and .2 (image 2), .35 (image 3)."""
    evaluator = LVISEvaluator(ann_file, dets_per_image=2, fixed_dets_per_category=2)
    evaluator.compact_threshold = 1  # compact after every image
    evaluator.reset()
    for image_id, dets in imperfect_detections().items():
        evaluator.process([sample(image_id)], [dets])
    assert [(r["image_id"], r["score"]) for r in evaluator.results] == [
        (1, pytest.approx(0.95)),
        (1, pytest.approx(0.6)),
        (1, pytest.approx(0.55)),
        (1, pytest.approx(0.5)),
        (2, pytest.approx(0.8)),
        (2, pytest.approx(0.7)),
        (3, pytest.approx(0.65)),
        (3, pytest.approx(0.4)),
    ]
    ours = evaluator.evaluate()

    def entry(image_id: int, category_id: int, box: list[float], score: float) -> dict[str, Any]:
        x1, y1, x2, y2 = box
        return {
            "image_id": image_id,
            "category_id": category_id,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score,
        }

    full = [  # imperfect_detections(), all 12 entries
        entry(1, 1, [11, 9, 41, 31], 0.95),
        entry(1, 5, [48, 42, 88, 70], 0.6),
        entry(1, 5, [0, 0, 20, 20], 0.55),
        entry(1, 9, [60, 50, 90, 70], 0.5),
        entry(1, 12, [5, 5, 25, 25], 0.3),
        entry(2, 9, [2, 1, 58, 62], 0.8),
        entry(2, 1, [30, 30, 50, 50], 0.7),
        entry(2, 1, [70, 5, 80, 15], 0.45),
        entry(2, 5, [0, 0, 10, 10], 0.2),
        entry(3, 12, [0, 0, 100, 100], 0.65),
        entry(3, 12, [10, 10, 60, 60], 0.4),
        entry(3, 1, [0, 0, 110, 100], 0.35),
    ]
    standard = direct(ann_file, naive_top(full, "image_id", 2), 2)
    fixed = direct(ann_file, naive_top(full, "category_id", 2), 10**6)
    assert_matches_direct(ours, standard, fixed)
    assert ours["bbox"]["AR2"] == pytest.approx(standard["AR_all"])
    assert 0 < ours["bbox"]["AP"] < 1 and 0 < ours["bbox_fixed"]["AP"] < 1


def test_empty_predictions_give_zeros(ann_file: Path) -> None:
    empty = detections([], [], [])
    metrics = run(LVISEvaluator(ann_file), {1: empty, 2: empty, 3: empty})
    assert all(v == 0.0 for table in metrics.values() for v in table.values())
    nothing = LVISEvaluator(ann_file).evaluate()  # no image at all
    assert all(v == 0.0 for table in nothing.values() for v in table.values())


def test_unknown_ids_in_a_predictions_file_are_named(ann_file: Path) -> None:
    evaluator = LVISEvaluator(ann_file)
    entry = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}
    with pytest.raises(ValueError, match=r"image ids not in the annotations: \[77\]"):
        evaluator.add_results([entry, {**entry, "image_id": 77}])
    with pytest.raises(ValueError, match=r"category ids not in the annotations: \[4\]"):
        evaluator.add_results([{**entry, "category_id": 4}])
    evaluator.add_results([entry])  # images without predictions count as misses
    assert evaluator.evaluate()["bbox"]["AP"] < 0.5


def test_labels_outside_the_prompt_are_an_error(ann_file: Path) -> None:
    bad = Detections(torch.zeros(1, 4), torch.ones(1), torch.tensor([4]), ["a"] * 5, (80, 100))
    with pytest.raises(ValueError, match="outside the 4 categories"):
        LVISEvaluator(ann_file).process([sample(1)], [bad])


def test_bad_annotation_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such annotation file"):
        lvis_benchmark(tmp_path / "missing.json", tmp_path)
    coco_like = {**GT, "categories": [{"id": c["id"], "name": c["name"]} for c in GT["categories"]]}
    (tmp_path / "coco.json").write_text(json.dumps(coco_like))
    with pytest.raises(ValueError, match="not an LVIS annotation file"):
        lvis_benchmark(tmp_path / "coco.json", tmp_path)
    with pytest.raises(ValueError, match="unknown category ids"):
        LVISEvaluator(_write(tmp_path, GT), [1, 2])
    no_box = {**GT, "annotations": [{k: v for k, v in GT["annotations"][0].items() if k != "bbox"}]}
    with pytest.raises(ValueError, match="annotations entry 0 lacks bbox"):
        lvis_benchmark(_write(tmp_path, no_box), tmp_path)
    stray = {**GT, "annotations": [*GT["annotations"], {**GT["annotations"][0], "id": 6, "category_id": 4}]}
    with pytest.raises(ValueError, match="annotations entry 5: category_id 4 is not a category"):
        lvis_benchmark(_write(tmp_path, stray), tmp_path)


def _write(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / "gt.json"
    path.write_text(json.dumps(data))
    return path


def test_benchmark_prompt_images_and_missing_image_folder(ann_file: Path, tmp_path: Path) -> None:
    images = tmp_path / "coco"
    (images / "train2017").mkdir(parents=True)
    (images / "000000000001.jpg").write_bytes(b"")
    (images / "train2017" / "000000000002.jpg").write_bytes(b"")
    benchmark = lvis_benchmark(ann_file, images)
    assert benchmark.name == "lvis" and benchmark.chunk_size == 40 and benchmark.detections_per_image == 300
    assert benchmark.samples[0].classes == ("aerosol can", "bear", "zebra", "apple")
    assert [s.image for s in benchmark.samples] == [
        images / "000000000001.jpg",
        images / "train2017" / "000000000002.jpg",
        images / "three.jpg",
    ]
    assert benchmark.evaluator.category_ids == CATEGORY_IDS
    with pytest.raises(FileNotFoundError, match="1 of 3 images"):
        benchmark.check_images()
    assert lvis_image_path(images, {"id": 5, "coco_url": "http://x/val2017/5.jpg"}) == images / "5.jpg"


def test_chunked_labels_map_back_to_category_ids(tmp_path: Path, make_predictor: Callable[..., Any]) -> None:
    # 95 categories with non-contiguous ids, listed out of order in the json
    ids = [7 + 3 * i + (i // 10) for i in range(95)]
    categories = [{"id": c, "name": f"thing_{c}_(x)", "frequency": "rcf"[i % 3]} for i, c in enumerate(ids)][
        ::-1
    ]
    data = {
        "images": [{"id": 1, "width": 64, "height": 64, "file_name": "a.jpg", "neg_category_ids": []}],
        "annotations": [],
        "categories": categories,
    }
    benchmark = lvis_benchmark(_write(tmp_path, data), tmp_path)
    names = benchmark.samples[0].classes
    assert names[:2] == ("thing 7", "thing 10")

    predictor = make_predictor()
    vocabulary = predictor.detection_vocabulary(list(names), chunk_size=benchmark.chunk_size)
    assert [c.label_offset for c in vocabulary.chunks] == [0, 40, 80]
    assert [c.prompt.num_labels for c in vocabulary.chunks] == [40, 40, 15]

    def fake_run(
        tensors: list[torch.Tensor], prompts: list[Any], postprocessor: Any = None, **_features: Any
    ) -> list[RawDetections]:
        # per prompt one detection per local label i, its box encoding (chunk, i)
        chunk = next(k for k, c in enumerate(vocabulary.chunks) if c.prompt is prompts[0])
        n = prompts[0].num_labels
        boxes = torch.tensor([[100.0 * chunk + i, 0.0, 100.0 * chunk + i + 5, 5.0] for i in range(n)])
        return [RawDetections(boxes, torch.linspace(0.9, 0.1, n), torch.arange(n))]

    predictor._run = fake_run
    image = torch.zeros(3, 64, 64)
    [dets] = predictor.predict_prepared([(image, (64, 64))], [vocabulary], threshold=0.0)
    results = benchmark.evaluator.to_results(benchmark.samples[0], dets)
    assert len(results) == 95
    for entry in results:
        chunk, i = divmod(int(entry["bbox"][0]), 100)
        assert entry["category_id"] == sorted(ids)[vocabulary.chunks[chunk].label_offset + i]
