"""Flickr30k Entities Recall@k (any-box / merged-box) and RefExp Precision@k on hand-built cases."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from glipv2 import Detections
from glipv2.evaluation.grounding import (
    FlickrEntry,
    FlickrEvaluator,
    RefExpEvaluator,
    flickr_benchmark,
    load_flickr,
    refexp_benchmark,
)


def span(caption: str, text: str) -> list[int]:
    start = caption.index(text)
    return [start, start + len(text)]


# --- Flickr30k Entities -----------------------------------------------------------------------------
CAP_A = "A man with a dog and two cats."
CAP_B = "A woman on a bench under the sky."
FLICKR = {
    "images": [
        {
            "id": 11,
            "file_name": "a.jpg",
            "caption": CAP_A,
            "original_img_id": 1,
            "sentence_id": 0,
            "tokens_positive_eval": [
                [span(CAP_A, "A man")],
                [span(CAP_A, "a dog")],
                [span(CAP_A, "two cats")],
            ],
        },
        {
            "id": 12,
            "file_name": "b.jpg",
            "caption": CAP_B,
            "original_img_id": 2,
            "sentence_id": 0,
            "tokens_positive_eval": [
                [span(CAP_B, "A woman")],
                [span(CAP_B, "a bench")],
                [span(CAP_B, "the sky")],
            ],
        },
    ],
    "annotations": [
        {"id": 1, "image_id": 11, "bbox": [0, 0, 10, 10], "tokens_positive": [span(CAP_A, "A man")]},
        {"id": 2, "image_id": 11, "bbox": [20, 0, 10, 10], "tokens_positive": [span(CAP_A, "a dog")]},
        # "two cats" has two boxes; they enclose (0, 20, 40, 30)
        {"id": 3, "image_id": 11, "bbox": [0, 20, 10, 10], "tokens_positive": [span(CAP_A, "two cats")]},
        {"id": 4, "image_id": 11, "bbox": [30, 20, 10, 10], "tokens_positive": [span(CAP_A, "two cats")]},
        {"id": 5, "image_id": 12, "bbox": [0, 0, 20, 40], "tokens_positive": [span(CAP_B, "A woman")]},
        {"id": 6, "image_id": 12, "bbox": [50, 30, 40, 10], "tokens_positive": [span(CAP_B, "a bench")]},
        # "the sky" has no box: prompted, never scored
    ],
}
JUNK = [200.0, 200.0, 210.0, 210.0]  # overlaps nothing


def flickr_predictions() -> dict[int, list[tuple[list[float], float, int]]]:
    """Per entry (xyxy box, score, phrase index). Worked out by hand, 5 scored phrases (sky has no box):

    man   rank 1 is its box                                -> any R@1, merged R@1
    dog   rank 1 junk, rank 2 (20,0,30,20): IoU 100/200 = 0.5 exactly (>= counts)
                                                           -> any R@5, merged R@5 (one box: merged = it)
    cats  rank 1 is the left cat: any-box hit at 1, but IoU with the merged (0,20,40,30) is 100/400;
          ranks 2-6 junk, rank 7 the merged box            -> any R@1, merged R@10 only
    woman no prediction of its own; the (0,0,20,40) box is predicted for "a bench" (label 1), which
          does not count for the woman                      -> never
    bench ranks 1-10 junk, its box at rank 11              -> never (beyond R@10)
    sky   predicted, but has no box                        -> not scored

    any-box:    R@1 = {man, cats} = 2/5, R@5 = R@10 = {man, dog, cats} = 3/5
    merged-box: R@1 = {man} = 1/5, R@5 = {man, dog} = 2/5, R@10 = {man, dog, cats} = 3/5"""
    a = [([0, 0, 10, 10], 0.9, 0), (JUNK, 0.9, 1), ([20, 0, 30, 20], 0.8, 1), ([0, 20, 10, 30], 0.9, 2)]
    a += [(JUNK, 0.8 - 0.01 * i, 2) for i in range(5)] + [([0, 20, 40, 30], 0.5, 2)]
    b = [([0, 0, 20, 40], 0.95, 1)] + [(JUNK, 0.9 - 0.01 * i, 1) for i in range(10)]
    b += [([50, 30, 90, 40], 0.3, 1), ([0, 0, 100, 20], 0.7, 2)]
    return {11: a, 12: b}


EXPECTED_FLICKR = {
    "any_box": {"R@1": 2 / 5, "R@5": 3 / 5, "R@10": 3 / 5},
    "merged_box": {"R@1": 1 / 5, "R@5": 2 / 5, "R@10": 3 / 5},
    "phrases": 5,
}


def as_results(predictions: dict[int, list[tuple[list[float], float, int]]]) -> list[dict[str, Any]]:
    return [
        {"image_id": image_id, "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
        for image_id, preds in predictions.items()
        for (x1, y1, x2, y2), score, label in preds
    ]


def as_detections(preds: list[tuple[list[float], float, int]], names: list[str]) -> Detections:
    preds = sorted(preds, key=lambda p: -p[1])
    return Detections(
        torch.tensor([p[0] for p in preds]).reshape(-1, 4),
        torch.tensor([p[1] for p in preds]),
        torch.tensor([p[2] for p in preds], dtype=torch.int64),
        names,
        (100, 100),
    )


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def flickr_file(tmp_path: Path) -> Path:
    return write_json(tmp_path / "final_flickr_separateGT_val.json", FLICKR)


def approx(expected: dict[str, Any]) -> Any:
    return {k: approx(v) if isinstance(v, dict) else pytest.approx(v) for k, v in expected.items()}


def test_flickr_recall_from_results_matches_hand_computation(flickr_file: Path) -> None:
    evaluator = FlickrEvaluator(flickr_file)
    evaluator.add_results(as_results(flickr_predictions()))
    assert evaluator.evaluate() == {"flickr": approx(EXPECTED_FLICKR)}


def test_flickr_process_path_gives_the_same_numbers(flickr_file: Path, tmp_path: Path) -> None:
    benchmark = flickr_benchmark(flickr_file, tmp_path)
    assert benchmark.name == "flickr"
    first = benchmark.samples[0]
    assert first.image == tmp_path / "a.jpg" and first.image_id == 11 and first.caption == CAP_A
    assert first.spans == (
        (tuple(span(CAP_A, "A man")),),
        (tuple(span(CAP_A, "a dog")),),
        (tuple(span(CAP_A, "two cats")),),
    )
    predictions = flickr_predictions()
    outputs = [as_detections(predictions[s.image_id], ["p0", "p1", "p2"]) for s in benchmark.samples]
    evaluator = benchmark.evaluator
    evaluator.process(benchmark.samples, outputs)
    assert evaluator.evaluate() == {"flickr": approx(EXPECTED_FLICKR)}
    # plain COCO boxes (no legacy +1): the dog's exact-0.5 match survives the round trip
    assert {
        "image_id": 11,
        "category_id": 2,
        "bbox": [20.0, 0.0, 10.0, 20.0],
        "score": pytest.approx(0.8),
    } in evaluator.predictions()

    # only the entries actually run are scored: entry 11 alone has 3 phrases
    evaluator.reset()
    evaluator.process(benchmark.samples[:1], outputs[:1])
    metrics = evaluator.evaluate()["flickr"]
    assert metrics["phrases"] == 3 and metrics["any_box"]["R@1"] == pytest.approx(2 / 3)


def test_flickr_phrases_fall_back_to_annotation_spans(tmp_path: Path) -> None:
    """The entries written out by hand. Character spans: CAP_A "A man" [0, 5), "a dog" [11, 16),
    "two cats" [21, 29); CAP_B "A woman" [0, 7), "a bench" [11, 18), "the sky" [25, 32). Boxes are
    plain xyxy, (x, y, x + w, y + h) of the COCO [x, y, w, h]."""
    man, dog, cats = ((0, 5),), ((11, 16),), ((21, 29),)
    woman, bench, sky = ((0, 7),), ((11, 18),), ((25, 32),)
    left_cat, right_cat = (0.0, 20.0, 10.0, 30.0), (30.0, 20.0, 40.0, 30.0)
    with_eval = {
        11: FlickrEntry(
            11,
            "a.jpg",
            CAP_A,
            (man, dog, cats),
            (((0.0, 0.0, 10.0, 10.0),), ((20.0, 0.0, 30.0, 10.0),), (left_cat, right_cat)),
        ),
        12: FlickrEntry(
            12,
            "b.jpg",
            CAP_B,
            (woman, bench, sky),
            (((0.0, 0.0, 20.0, 40.0),), ((50.0, 30.0, 90.0, 40.0),), ()),  # the sky: prompted, no box
        ),
    }
    assert {e.image_id: e for e in load_flickr(write_json(tmp_path / "g.json", FLICKR))} == with_eval

    # without tokens_positive_eval, and with the annotations listed backwards: the phrases are the
    # distinct annotation spans in caption order; a phrase's boxes keep the annotations' order
    data = copy.deepcopy(FLICKR)
    for info in data["images"]:
        del info["tokens_positive_eval"]
    data["annotations"] = data["annotations"][::-1]
    fallback = {
        11: FlickrEntry(
            11,
            "a.jpg",
            CAP_A,
            (man, dog, cats),
            (((0.0, 0.0, 10.0, 10.0),), ((20.0, 0.0, 30.0, 10.0),), (right_cat, left_cat)),
        ),
        # the box-less "the sky" is not known as a phrase
        12: FlickrEntry(
            12, "b.jpg", CAP_B, (woman, bench), (((0.0, 0.0, 20.0, 40.0),), ((50.0, 30.0, 90.0, 40.0),))
        ),
    }
    assert {e.image_id: e for e in load_flickr(write_json(tmp_path / "f.json", data))} == fallback


def test_flickr_no_predictions_scores_zero(flickr_file: Path) -> None:
    evaluator = FlickrEvaluator(flickr_file)
    evaluator.add_results([])
    zeros = {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0}
    assert evaluator.evaluate() == {"flickr": {"any_box": zeros, "merged_box": zeros, "phrases": 5}}
    evaluator.reset()  # nothing evaluated at all
    assert evaluator.evaluate() == {"flickr": {"any_box": zeros, "merged_box": zeros, "phrases": 0}}


def test_flickr_rejects_unknown_image_and_category_ids(flickr_file: Path) -> None:
    evaluator = FlickrEvaluator(flickr_file)
    entry = {"image_id": 11, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}
    with pytest.raises(ValueError, match=r"image ids not in the annotations: \[99\]"):
        evaluator.add_results([entry, {**entry, "image_id": 99}])
    with pytest.raises(ValueError, match=r"\(11, 4\)"):  # entry 11 has 3 phrases -> ids 1..3
        evaluator.add_results([entry, {**entry, "category_id": 4}])
    with pytest.raises(ValueError, match=r"\(12, 0\)"):
        evaluator.add_results([{**entry, "image_id": 12, "category_id": 0}])
    assert evaluator.predictions() == []


def test_flickr_annotation_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.json"):
        flickr_benchmark(tmp_path / "missing.json", tmp_path)
    bad = copy.deepcopy(FLICKR)
    del bad["images"][1]["caption"]
    with pytest.raises(ValueError, match="images entry 1 lacks caption"):
        flickr_benchmark(write_json(tmp_path / "a.json", bad), tmp_path)
    bad = copy.deepcopy(FLICKR)
    bad["annotations"][0]["image_id"] = 77
    with pytest.raises(ValueError, match=r"image ids not in images \(e.g. \[77\]\)"):
        flickr_benchmark(write_json(tmp_path / "b.json", bad), tmp_path)
    bad = copy.deepcopy(FLICKR)
    bad["images"][0]["tokens_positive_eval"][0] = [[0, 500]]
    with pytest.raises(ValueError, match="outside its caption"):
        flickr_benchmark(write_json(tmp_path / "c.json", bad), tmp_path)
    with pytest.raises(FileNotFoundError, match="2 of 2 images"):
        flickr_benchmark(write_json(tmp_path / "d.json", FLICKR), tmp_path).check_images()


# --- referring expressions --------------------------------------------------------------------------
REF_MDETR = {
    "images": [
        {"id": 1, "original_id": 5, "file_name": "COCO_train2014_5.jpg", "caption": "the left cat"},
        {"id": 2, "original_id": 5, "file_name": "COCO_train2014_5.jpg", "caption": "dog on the right"},
        {"id": 3, "original_id": 6, "file_name": "COCO_train2014_6.jpg", "caption": "man in red"},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "bbox": [0, 0, 10, 10], "tokens_positive": [[9, 12]], "category_id": 1},
        {"id": 2, "image_id": 2, "bbox": [20, 0, 10, 10], "category_id": 1},
        {"id": 3, "image_id": 3, "bbox": [40, 40, 10, 10], "category_id": 1},
    ],
}


def refexp_predictions(first: int, second: int) -> dict[int, list[tuple[list[float], float, int]]]:
    """Hand-computed over 3 expressions: `first` hit at rank 1; `second` ranks junk first and its
    target third (P@5, not P@1); the third expression has no prediction at all.
    -> P@1 = 1/3, P@5 = P@10 = 2/3."""
    return {
        first: [([0, 0, 10, 10], 0.9, 0), (JUNK, 0.2, 0)],
        second: [(JUNK, 0.9, 0), (JUNK, 0.8, 0), ([21, 0, 30, 10], 0.7, 0)],
    }


EXPECTED_REFEXP = {"P@1": 1 / 3, "P@5": 2 / 3, "P@10": 2 / 3, "expressions": 3}


def test_refexp_mdetr_json(tmp_path: Path) -> None:
    ann_file = write_json(tmp_path / "final_refcoco_val.json", REF_MDETR)
    benchmark = refexp_benchmark(ann_file, tmp_path)
    assert benchmark.name == "refcoco"
    assert [s.spans for s in benchmark.samples] == [(((9, 12),),), (((0, 16),),), (((0, 10),),)]
    predictions = refexp_predictions(1, 2)
    benchmark.evaluator.process(
        benchmark.samples, [as_detections(predictions.get(s.image_id, []), ["x"]) for s in benchmark.samples]
    )
    assert benchmark.evaluator.evaluate() == {"refexp": approx(EXPECTED_REFEXP)}

    evaluator = RefExpEvaluator(ann_file)
    evaluator.add_results(as_results(predictions))
    assert evaluator.evaluate() == {"refexp": approx(EXPECTED_REFEXP)}
    with pytest.raises(ValueError, match="refs pickles only"):
        refexp_benchmark(ann_file, tmp_path, split="val")


@pytest.fixture
def refer_file(tmp_path: Path) -> Path:
    folder = tmp_path / "refcoco"
    folder.mkdir()
    refs = [
        {
            "ref_id": 1,
            "ann_id": 101,
            "image_id": 5,
            "split": "val",
            "category_id": 17,
            "file_name": "COCO_train2014_000000000005_101.jpg",
            "sentences": [
                {"sent": "left cat", "raw": "Left cat", "sent_id": 1, "tokens": ["left", "cat"]},
                {"sent": "the cat on the left", "raw": "The cat on the left", "sent_id": 2},
            ],
        },
        {
            "ref_id": 2,
            "ann_id": 102,
            "image_id": 5,
            "split": "val",
            "sentences": [{"sent": "dog", "sent_id": 3}],
        },
        {
            "ref_id": 3,
            "ann_id": 103,
            "image_id": 6,
            "split": "testA",
            "sentences": [{"sent": "man", "sent_id": 4}],
        },
    ]
    with (folder / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f)
    write_json(
        folder / "instances.json",
        {
            "images": [
                {"id": 5, "file_name": "COCO_train2014_000000000005.jpg"},
                {"id": 6, "file_name": "COCO_train2014_000000000006.jpg"},
            ],
            "annotations": [
                {"id": 101, "image_id": 5, "bbox": [0, 0, 10, 10]},
                {"id": 102, "image_id": 5, "bbox": [20, 0, 10, 10]},
                {"id": 103, "image_id": 6, "bbox": [0, 0, 5, 5]},
            ],
            "categories": [],
        },
    )
    return folder / "refs(unc).p"


IMAGE_5 = "COCO_train2014_000000000005.jpg"
ONE_BOX = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}


def test_refexp_refer_format_and_split_selection(refer_file: Path, tmp_path: Path) -> None:
    benchmark = refexp_benchmark(refer_file, tmp_path, split="val")
    assert [(s.image_id, s.caption, s.image.name) for s in benchmark.samples] == [
        (1, "left cat", IMAGE_5),
        (2, "the cat on the left", IMAGE_5),
        (3, "dog", IMAGE_5),
    ]
    # sentence 2 targets ann 101 (0, 0, 10, 10): hit at rank 1; sentence 3 targets the dog
    # (20, 0, 30, 10): hit at rank 3; sentence 1 has no prediction -> P@1 1/3, P@5 2/3
    benchmark.evaluator.add_results(as_results(refexp_predictions(2, 3)))
    assert benchmark.evaluator.evaluate() == {"refexp": approx(EXPECTED_REFEXP)}

    test_a = refexp_benchmark(refer_file, tmp_path, split="testA")
    assert [s.image_id for s in test_a.samples] == [4]
    with pytest.raises(ValueError, match="needs a split \\(present: testA, val\\)"):
        refexp_benchmark(refer_file, tmp_path)
    with pytest.raises(ValueError, match="no refs in split 'testB'"):
        refexp_benchmark(refer_file, tmp_path, split="testB")
    with pytest.raises(ValueError, match=r"image ids not in the annotations: \[4\]"):  # sentence 4 is testA
        benchmark.evaluator.add_results([{**ONE_BOX, "image_id": 4}])
    with pytest.raises(ValueError, match="other than 1"):
        benchmark.evaluator.add_results([{**ONE_BOX, "category_id": 2}])


class Hostile:
    """Unpickling this would create `path` (a stand-in for running arbitrary code)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (str(self.path), "w"))


def test_refer_pickle_with_a_global_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "split": "val", "sentences": [Hostile(marker)]}]))
    with pytest.raises(ValueError, match="not a refer refs pickle.*refusing to load the global io.open"):
        refexp_benchmark(path, tmp_path, split="val")
    assert not marker.exists()
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a refer refs pickle"):
        refexp_benchmark(path, tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match="refs\\(umd\\).p"):
        refexp_benchmark(tmp_path / "refs(umd).p", tmp_path, split="val")


def test_refexp_no_predictions_scores_zero(tmp_path: Path) -> None:
    evaluator = RefExpEvaluator(write_json(tmp_path / "r.json", REF_MDETR))
    evaluator.add_results([])
    assert evaluator.evaluate() == {"refexp": {"P@1": 0.0, "P@5": 0.0, "P@10": 0.0, "expressions": 3}}
