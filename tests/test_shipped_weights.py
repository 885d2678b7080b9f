"""The shipped weights (`src/glipv2/weights/glipv2_tiny_shapes`, inside the package so that wheels carry
them; written by `scripts/train_tiny_shapes.sh`): they lie where `glipv2.utils.shipped` looks, come
from the committed recipe, fit the size limit, are one multi-task model, detect, answer and describe
fresh ShapesWorld images, and give the outputs recorded when they were trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from glipv2.data.shapes_world import generate_shapes_world
from glipv2.evaluation.coco import evaluate_detection
from glipv2.inference.predictor import Predictor
from glipv2.loading import load_model
from glipv2.utils.shipped import DEFAULT_SHIPPED_MODEL, SHIPPED_WEIGHTS_DIR, list_shipped_models

REPO = Path(__file__).resolve().parents[1]
SHIPPED = SHIPPED_WEIGHTS_DIR / DEFAULT_SHIPPED_MODEL
RECIPE = REPO / "configs" / "glipv2_tiny_shapes.yaml"

pytestmark = pytest.mark.skipif(
    not (SHIPPED / "config.json").is_file(), reason="no shipped weights in this checkout"
)


def test_shipped_weights_lie_inside_the_package_where_they_are_looked_up() -> None:
    # inside src/glipv2 (the wheel's package data), not at the repository root any more
    assert SHIPPED.is_relative_to(REPO / "src" / "glipv2")
    assert DEFAULT_SHIPPED_MODEL in list_shipped_models()


def test_shipped_weights_follow_the_committed_recipe() -> None:
    saved = json.loads((SHIPPED / "config.json").read_text())
    overrides = yaml.safe_load(RECIPE.read_text())["model_overrides"]
    assert {k: saved[k] for k in overrides} == overrides


def test_shipped_weights_fit_in_60_mb() -> None:
    assert sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) <= 60 * 2**20


def test_shipped_weights_are_one_multi_task_model() -> None:
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["mask_head"] and config["caption_head"] and len(config["vqa_answers"]) > 10


@pytest.fixture(scope="module")
def fresh_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the first 12 images of the split the script scores (seed 101)
    folder = tmp_path_factory.mktemp("val")
    generate_shapes_world(folder, 12, 101, split="val")
    return folder


def test_shipped_weights_detect_shapes_on_fresh_val_images(fresh_val: Path) -> None:
    # random detection weights score ~0; the shipped multi-task weights reach AP50 0.20 on the 200
    # val images (README: the understanding tasks cost localisation in this recipe)
    model = load_model(str(SHIPPED)).eval()
    metrics = evaluate_detection(
        Predictor(model), fresh_val / "instances.json", fresh_val / "images", progress=False
    )
    assert metrics["bbox"]["AP50"] >= 0.1


COLOUR_WORDS = {"red", "green", "blue", "yellow", "purple", "orange"}
SHAPE_WORDS = {"circle", "square", "triangle", "star", "hexagon", "cross"}


def test_shipped_weights_answer_in_kind_and_describe_fresh_val_images(fresh_val: Path) -> None:
    """Each question's top answer is of the question's kind (a number for a count, yes / no, a colour
    word for a colour question, ...) — random weights do not do that — and every caption names at
    least one colour-shape pair. (The accuracies, near the question-only level for
    these weights: scripts/eval_tiny_shapes.py and the README.)"""
    predictor = Predictor(load_model(str(SHIPPED)))
    questions = json.loads((fresh_val / "vqa_questions.json").read_text())
    kinds = {
        a["question_id"]: a["question_type"]
        for a in json.loads((fresh_val / "vqa_annotations.json").read_text())["annotations"]
    }
    files = {i["id"]: fresh_val / "images" / i["file_name"] for i in questions["images"]}
    expected = {
        "count": lambda a: a.isdigit(),
        "existence": lambda a: a in ("yes", "no"),
        "relative position": lambda a: a in ("yes", "no"),
        "colour": lambda a: a in COLOUR_WORDS,
        "shape": lambda a: a in SHAPE_WORDS,
        "size": lambda a: a in ("small", "large"),
    }
    in_kind = [
        expected[kinds[q["question_id"]]](predictor.answer(str(files[q["image_id"]]), q["question"])[0][0])
        for q in questions["questions"]
    ]
    assert sum(in_kind) / len(in_kind) >= 0.9
    for file in files.values():
        caption = predictor.caption(str(file), beam_size=1)
        assert any(f"{c} {s}" in caption for c in COLOUR_WORDS for s in SHAPE_WORDS), caption


NAMES = ["red circle", "blue square", "green triangle", "yellow star", "purple hexagon", "orange cross"]
GROUNDED = "a red circle and a blue square"
QUESTIONS = ["how many objects are there?", "is there a red circle?"]


def shipped_outputs(folder: Path) -> list[dict[str, Any]]:
    """What the shipped weights give on the first 3 ShapesWorld val images of seed 123: detection of
    6 names and the grounding of one caption (threshold 0.1, masks as pixel counts), the top-3 answers
    to two questions and the greedy caption."""
    from glipv2 import Predictor

    generate_shapes_world(folder, 3, 123, split="val")
    predictor = Predictor(load_model(str(SHIPPED)))
    records: list[dict[str, Any]] = []
    for image in sorted((folder / "images").glob("*.png")):
        for task, found in (
            ("detect", predictor.detect(str(image), NAMES, threshold=0.1)),
            ("ground", predictor.ground(str(image), GROUNDED, threshold=0.1)),
        ):
            records.append(
                {
                    "image": image.name,
                    "task": task,
                    "labels": found.labels.tolist(),
                    "boxes": [round(v, 4) for v in found.boxes.flatten().tolist()],
                    "scores": found.scores.tolist(),
                    "mask_pixels": [int(m.sum()) for m in found.masks],
                }
            )
        answers = predictor.answer(str(image), QUESTIONS, top_k=3)
        records.append(
            {"image": image.name, "task": "answer", "answers": [[list(a) for a in r] for r in answers]}
        )
        records.append(
            {"image": image.name, "task": "caption", "caption": predictor.caption(str(image), beam_size=3)}
        )
    return records


def test_shipped_weights_give_the_recorded_outputs(tmp_path: Path) -> None:
    """`shipped_weights_outputs.json` was recorded from these weights when they were trained
    (`python tests/test_shipped_weights.py --record`): a change of the code that changes what they
    output shows up here."""
    reference = json.loads(RECORDED.read_text())
    seen = shipped_outputs(tmp_path)
    assert [(r["image"], r["task"]) for r in seen] == [(r["image"], r["task"]) for r in reference]
    for found, expected in zip(seen, reference):
        if found["task"] == "caption":
            assert found["caption"] == expected["caption"]
        elif found["task"] == "answer":
            for got, want in zip(found["answers"], expected["answers"]):
                assert [a for a, _ in got] == [a for a, _ in want]
                torch.testing.assert_close(
                    torch.tensor([s for _, s in got]), torch.tensor([s for _, s in want]), atol=1e-5, rtol=0
                )
        else:
            assert found["labels"] == expected["labels"]
            torch.testing.assert_close(
                torch.tensor(found["boxes"]), torch.tensor(expected["boxes"]), atol=1e-3, rtol=0
            )
            torch.testing.assert_close(
                torch.tensor(found["scores"]), torch.tensor(expected["scores"]), atol=1e-5, rtol=0
            )
            assert found["mask_pixels"] == expected["mask_pixels"]


RECORDED = Path(__file__).parent / "shipped_weights_outputs.json"

if __name__ == "__main__":  # re-record after retraining the weights
    import sys
    import tempfile

    if sys.argv[1:] != ["--record"]:
        raise SystemExit("usage: python tests/test_shipped_weights.py --record")
    with tempfile.TemporaryDirectory() as tmp:
        RECORDED.write_text(json.dumps(shipped_outputs(Path(tmp)), indent=1) + "\n")
    print(f"wrote {RECORDED}")
