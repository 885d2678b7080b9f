"""`glipv2 eval` from the shell: model runs, re-scoring a predictions file, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_config

from glipv2 import GLIPv2
from glipv2.cli import main
from glipv2.data.shapes_world import generate_shapes_world
from glipv2.evaluation.coco import STAT_NAMES
from glipv2.processing.postprocess import legacy_nms

SMALL = ["--size", "64,96"]  # random weights: only the plumbing is under test, so keep forwards tiny


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate_shapes_world(out, 3, seed=5, split="val", progress=False)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny model whose post-processing keeps every candidate (random scores sit near the
    0.01 prior, below the default 0.05 threshold), so the runs have predictions to write."""
    torch.manual_seed(0)
    model = GLIPv2(make_tiny_config(pad_to_max_query_len=False, inference_threshold=0.0))
    return model.save_pretrained(tmp_path_factory.mktemp("model"))


def run(*args: str) -> int:
    return main(["eval", *args])


def test_coco_run_writes_metrics_predictions_and_a_table(
    shapes: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "metrics.json"
    assert (
        run(
            "coco",
            "--model",
            str(model_dir),
            "--ann",
            str(shapes / "instances.json"),
            "--images",
            str(shapes / "images"),
            "--out",
            str(out),
            "--no-progress",
            *SMALL,
        )
        == 0
    )
    metrics = json.loads(out.read_text())
    assert list(metrics) == ["bbox"] and list(metrics["bbox"]) == list(STAT_NAMES)
    assert all(v is None or 0.0 <= v <= 1.0 for v in metrics["bbox"].values())
    predictions = json.loads((tmp_path / "metrics_predictions.json").read_text())
    assert predictions and {p["image_id"] for p in predictions} <= {1, 2, 3}
    categories = {c["id"] for c in json.loads((shapes / "instances.json").read_text())["categories"]}
    assert {p["category_id"] for p in predictions} <= categories
    printed = capsys.readouterr()
    assert "AP50" in printed.out and "3 images in" in printed.err

    # the predictions file scores to the same figures without a model
    again = tmp_path / "again.json"
    assert (
        run(
            "coco",
            "--predictions",
            str(tmp_path / "metrics_predictions.json"),
            "--ann",
            str(shapes / "instances.json"),
            "--out",
            str(again),
        )
        == 0
    )
    assert json.loads(again.read_text()) == metrics
    assert not (tmp_path / "again_predictions.json").exists()


def test_empty_predictions_score_zero(shapes: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    out = tmp_path / "m.json"
    assert (
        run("coco", "--predictions", str(empty), "--ann", str(shapes / "instances.json"), "--out", str(out))
        == 0
    )
    assert json.loads(out.read_text())["bbox"]["AP"] == 0.0


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [{"image_id": 1, "category_id": 999, "bbox": [0, 0, 5, 5], "score": 0.5}],
            "category ids not in the annotations",
        ),
        (
            [{"image_id": 77, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}],
            "image ids not in the annotations",
        ),
        ({"not": "a list"}, "JSON list"),
    ],
)
def test_bad_predictions_are_one_line_errors(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], entries: object, message: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(entries))
    out = tmp_path / "m.json"
    assert (
        run("coco", "--predictions", str(bad), "--ann", str(shapes / "instances.json"), "--out", str(out))
        == 2
    )
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_annotations_that_do_not_match_the_image_folder(
    shapes: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "elsewhere").mkdir()
    out = tmp_path / "m.json"
    assert (
        run(
            "coco",
            "--model",
            str(model_dir),
            "--ann",
            str(shapes / "instances.json"),
            "--images",
            str(tmp_path / "elsewhere"),
            "--out",
            str(out),
            *SMALL,
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "3 of 3 images listed in the annotations are not in the image folder" in err and not out.exists()


def test_missing_annotation_file_and_missing_images_flag(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(
            "coco",
            "--model",
            str(model_dir),
            "--ann",
            str(tmp_path / "nope.json"),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "m.json"),
        )
        == 2
    )
    assert "no such annotation file" in capsys.readouterr().err
    assert (
        run(
            "flickr",
            "--model",
            str(model_dir),
            "--ann",
            str(tmp_path / "nope.json"),
            "--out",
            str(tmp_path / "m.json"),
        )
        == 2
    )
    assert "needs --images" in capsys.readouterr().err


def test_flickr_protocol_on_grounding_json(shapes: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "flickr.json"
    assert (
        run(
            "flickr",
            "--model",
            str(model_dir),
            "--ann",
            str(shapes / "grounding.json"),
            "--images",
            str(shapes / "images"),
            "--out",
            str(out),
            "--no-progress",
            "--limit",
            "2",
            *SMALL,
        )
        == 0
    )
    metrics = json.loads(out.read_text())["flickr"]
    assert set(metrics) == {"any_box", "merged_box", "phrases"} and metrics["phrases"] > 0
    assert all(0.0 <= metrics[p][k] <= 1.0 for p in ("any_box", "merged_box") for k in ("R@1", "R@5", "R@10"))
    # recall can only grow with k
    assert metrics["any_box"]["R@1"] <= metrics["any_box"]["R@5"] <= metrics["any_box"]["R@10"]
    predictions = json.loads((tmp_path / "flickr_predictions.json").read_text())
    assert {p["image_id"] for p in predictions} <= {1, 2} and min(p["category_id"] for p in predictions) >= 1


def test_odinw_folder_gives_a_table_per_dataset_and_the_average(
    shapes: Path, model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "odinw.json"
    assert (
        run(
            "odinw",
            "--model",
            str(model_dir),
            "--ann",
            str(shapes),
            "--pattern",
            "instances.json",
            "--out",
            str(out),
            "--no-progress",
            "--limit",
            "1",
            *SMALL,
        )
        == 0
    )
    metrics = json.loads(out.read_text())
    assert list(metrics["datasets"]) == ["instances"] and set(metrics["average"]) == {"AP", "AP50"}
    assert metrics["average"]["AP"] == metrics["datasets"]["instances"]["bbox"]["AP"]
    predictions = json.loads((tmp_path / "odinw_predictions.json").read_text())
    assert set(predictions) == {"instances"}
    # and the mapping re-scores without a model
    again = tmp_path / "again.json"
    assert (
        run(
            "odinw",
            "--predictions",
            str(tmp_path / "odinw_predictions.json"),
            "--ann",
            str(shapes),
            "--pattern",
            "instances.json",
            "--out",
            str(again),
            "--limit",
            "1",
        )
        == 0
    )
    assert json.loads(again.read_text()) == metrics  # --limit: the same image as the model run


def test_one_label_per_box_keeps_the_top_label_of_overlapping_boxes(
    shapes: Path, model_dir: Path, tmp_path: Path
) -> None:
    def predictions(*flags: str) -> list[dict]:
        out = tmp_path / "metrics.json"
        assert (
            run(
                "coco",
                "--model",
                str(model_dir),
                "--ann",
                str(shapes / "instances.json"),
                "--images",
                str(shapes / "images"),
                "--out",
                str(out),
                "--no-progress",
                *SMALL,
                *flags,
            )
            == 0
        )
        return json.loads((tmp_path / "metrics_predictions.json").read_text())

    def overlaps_across_labels(results: list[dict]) -> int:
        """How many boxes an NMS across all labels (IoU 0.6, the model's) would still remove."""
        removed = 0
        for image_id in {r["image_id"] for r in results}:
            mine = [r for r in results if r["image_id"] == image_id]
            boxes = torch.tensor([[x, y, x + w - 1, y + h - 1] for x, y, w, h in (r["bbox"] for r in mine)])
            scores = torch.tensor([r["score"] for r in mine])
            removed += len(mine) - len(
                legacy_nms(boxes, scores, torch.zeros(len(mine), dtype=torch.long), 0.6)
            )
        return removed

    official, one_label = predictions(), predictions("--one-label-per-box")
    assert overlaps_across_labels(official) > 0  # per-label NMS: a box keeps a copy for several names
    assert one_label and overlaps_across_labels(one_label) == 0

    # each image's best detection survives both NMS passes and the top-100 cut unchanged
    def best(results: list[dict]) -> dict:
        return {
            i: max((r for r in results if r["image_id"] == i), key=lambda r: r["score"])
            for i in {r["image_id"] for r in results}
        }

    assert best(one_label) == best(official)


def test_one_label_per_box_goes_with_a_model_not_with_predictions(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results.json"
    results.write_text("[]")
    assert (
        run(
            "coco",
            "--predictions",
            str(results),
            "--ann",
            str(shapes / "instances.json"),
            "--out",
            str(tmp_path / "m.json"),
            "--one-label-per-box",
        )
        == 2
    )
    assert "--one-label-per-box" in capsys.readouterr().err


def test_unwritable_out_fails_before_any_work(
    shapes: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    assert (
        run(
            "coco",
            "--model",
            str(model_dir),
            "--ann",
            str(shapes / "instances.json"),
            "--images",
            str(shapes / "images"),
            "--out",
            str(tmp_path / "file" / "m.json"),
            *SMALL,
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "cannot write there" in err and "images/s" not in err


def test_a_caption_too_long_for_the_model_fails_before_any_forward(
    model_dir: Path, shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    caption = " ".join(["a very long caption"] * 80) + " with a red circle"
    entry = {
        "id": 1,
        "file_name": "val_000000.png",
        "caption": caption,
        "tokens_positive_eval": [[[len(caption) - 10, len(caption)]]],
    }
    ann = {
        "images": [entry],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "bbox": [1, 1, 5, 5],
                "category_id": 1,
                "tokens_positive": [[len(caption) - 10, len(caption)]],
            }
        ],
        "categories": [{"id": 1, "name": "object"}],
    }
    (tmp_path / "long.json").write_text(json.dumps(ann))
    assert (
        run(
            "flickr",
            "--model",
            str(model_dir),
            "--ann",
            str(tmp_path / "long.json"),
            "--images",
            str(shapes / "images"),
            "--out",
            str(tmp_path / "m.json"),
            *SMALL,
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "flickr: image id 1:" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
