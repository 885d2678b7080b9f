"""Answers and captions: `Predictor.answer / caption`, `glipv2 predict --question / --describe`, and
`glipv2 eval vqa / caption --model` on VQAv2- and COCO-captions-format files, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from glipv2 import GLIPv2, Predictor
from glipv2.cli import main
from glipv2.processing.processor import GLIPv2Processor


@pytest.fixture(scope="module")
def predictor(understanding_model_dir: Path) -> Predictor:
    model = GLIPv2.from_pretrained(understanding_model_dir)
    return Predictor(model, GLIPv2Processor.for_model(model), batch_size=2)


@pytest.fixture
def images(tmp_path: Path, random_image: Any) -> list[Path]:
    files = []
    for i, size in enumerate(((80, 60), (64, 90), (70, 70))):
        path = tmp_path / f"img{i}.png"
        random_image(i, size).save(path)
        files.append(path)
    return files


def test_answer_shapes_and_scores_match_the_head(predictor: Predictor, images: list[Path]) -> None:
    ranked = predictor.answer(images, "what colour is it?", top_k=3)
    assert len(ranked) == 3 and all(len(r) == 3 for r in ranked)
    for r in ranked:
        scores = [s for _, s in r]
        assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
        assert {a for a, _ in r} <= {"yes", "no", "2", "red"}
    # the scores are the sigmoid of the head's logits for that question on that image alone (the
    # predictor batches questions of one image only: a batch's padding is part of what fusion reads)
    processor, model = predictor.processor, predictor.model
    batch = processor.preprocess([images[1]])
    tokens = processor.tokenize(["what colour is it?"])
    with torch.no_grad():
        logits = model(
            batch.pixel_values, tokens.input_ids, tokens.attention_mask, batch.image_sizes, heads=["vqa"]
        )
    probabilities = logits.vqa_logits.sigmoid()[0]
    best = int(probabilities.argmax())
    assert ranked[1][0][0] == processor.answers[best]
    assert ranked[1][0][1] == pytest.approx(float(probabilities[best]), abs=1e-5)
    # one image, several questions; one image and one question give one list
    assert len(predictor.answer(images[0], ["is it red?", "how many?"])) == 2
    single = predictor.answer(images[0], "is it red?")
    assert isinstance(single, list) and isinstance(single[0], tuple)
    with pytest.raises(ValueError, match="2 questions for 3 images"):
        predictor.answer(images, ["a?", "b?"])
    with pytest.raises(ValueError, match="non-empty"):
        predictor.answer(images[0], "  ")


def test_caption_batched_equals_one_by_one_and_greedy_equals_beam_one(
    predictor: Predictor, images: list[Path]
) -> None:
    together = predictor.caption(images, beam_size=1, max_length=6)
    alone = [predictor.caption(image, beam_size=1, max_length=6) for image in images]
    assert together == alone and all(isinstance(c, str) and c for c in together)
    assert predictor.caption(images, beam_size=2, max_length=6) == [
        predictor.caption(image, beam_size=2, max_length=6) for image in images
    ]


def test_predict_question_and_describe_from_the_shell(
    understanding_model_dir: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.png"
    out = tmp_path / "answers.json"
    code = main(
        [
            "predict",
            str(images[0]),
            str(missing),
            str(images[1]),
            "--model",
            str(understanding_model_dir),
            "--question",
            "how many red circles?",
            "--top-k",
            "2",
            "--out",
            str(out),
            "--viz",
            str(tmp_path / "viz"),
        ]
    )
    assert code == 2  # the missing image: one line, the other images still answered
    err = capsys.readouterr().err
    assert "missing.png" in err and "Traceback" not in err
    document = json.loads(out.read_text())
    assert document["task"] == "vqa" and document["question"] == "how many red circles?"
    first, bad, last = document["images"]
    assert "error" in bad and "answers" not in bad
    assert len(first["answers"]) == 2 and {"answer", "score"} == set(first["answers"][0])
    assert (first["width"], first["height"]) == (80, 60) and "answers" in last
    assert (tmp_path / "viz" / "img0.png").is_file() and (tmp_path / "viz" / "img1.png").is_file()

    out = tmp_path / "captions.json"
    assert (
        main(
            [
                "predict",
                *map(str, images),
                "--model",
                str(understanding_model_dir),
                "--describe",
                "--beam-size",
                "1",
                "--max-length",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    entries = json.loads(out.read_text())["images"]
    assert [e["generated_caption"] for e in entries] == Predictor(
        GLIPv2.from_pretrained(understanding_model_dir)
    ).caption(images, beam_size=1, max_length=5)


def test_predict_refuses_a_model_without_the_head(
    tiny_model: GLIPv2, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tiny_model.save_pretrained(tmp_path / "no_heads")
    for flags, message in ((["--question", "why?"], "no VQA head"), (["--describe"], "no caption head")):
        assert (
            main(
                ["predict", str(images[0]), "--model", str(folder), *flags, "--out", str(tmp_path / "o.json")]
            )
            == 2
        )
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def _vqa_files(tmp_path: Path, images: list[Path]) -> tuple[Path, Path]:
    """A VQAv2-format pair over the images (COCO naming: the images are copied to those names)."""
    folder = tmp_path / "val2014"
    folder.mkdir()
    questions, annotations = [], []
    for i, image in enumerate(images):
        (folder / f"COCO_val2014_{i + 1:012d}.jpg").write_bytes(image.read_bytes())
        for j, (text, answer) in enumerate((("is it red?", "yes"), ("how many?", "two"))):
            qid = (i + 1) * 10 + j
            questions.append({"image_id": i + 1, "question": text, "question_id": qid})
            annotations.append(
                {
                    "question_id": qid,
                    "image_id": i + 1,
                    "question_type": "is it" if j == 0 else "how many",
                    "answer_type": "yes/no" if j == 0 else "number",
                    "multiple_choice_answer": answer,
                    "answers": [
                        {"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)
                    ],
                }
            )
    q = tmp_path / "questions.json"
    q.write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    a = tmp_path / "annotations.json"
    a.write_text(json.dumps({"annotations": annotations}))
    return q, folder


def test_eval_vqa_and_caption_with_a_model(
    understanding_model_dir: Path, images: list[Path], tmp_path: Path, predictor: Predictor
) -> None:
    questions, folder = _vqa_files(tmp_path, images)
    out = tmp_path / "vqa_metrics.json"
    code = main(
        [
            "eval",
            "vqa",
            "--model",
            str(understanding_model_dir),
            "--questions",
            str(questions),
            "--ann",
            str(tmp_path / "annotations.json"),
            "--images",
            str(folder),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    vqa = json.loads(out.read_text())["vqa"]
    answers = {
        p["question_id"]: p["answer"]
        for p in json.loads((tmp_path / "vqa_metrics_predictions.json").read_text())
    }
    # "two" normalises to "2": the accuracy is the share of questions answered as the 10 annotators did
    expected = [
        float(answers[(i + 1) * 10 + j] == ("yes" if j == 0 else "2"))
        for i in range(len(images))
        for j in range(2)
    ]
    assert vqa["accuracy"] == pytest.approx(sum(expected) / len(expected))
    assert set(vqa["per_type"]) == {"is it", "how many"}

    captions = tmp_path / "captions_val.json"
    captions.write_text(
        json.dumps(
            {
                "images": [{"id": i + 1, "file_name": image.name} for i, image in enumerate(images)],
                "annotations": [
                    {"id": k, "image_id": i + 1, "caption": text}
                    for k, (i, text) in enumerate(
                        (i, t) for i in range(3) for t in ("a red circle.", "one red circle on grey.")
                    )
                ],
            }
        )
    )
    out = tmp_path / "caption_metrics.json"
    code = main(
        [
            "eval",
            "caption",
            "--model",
            str(understanding_model_dir),
            "--ann",
            str(captions),
            "--images",
            str(images[0].parent),
            "--beam-size",
            "1",
            "--max-length",
            "5",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    metrics = json.loads(out.read_text())["caption"]
    written = json.loads((tmp_path / "caption_metrics_predictions.json").read_text())
    assert [p["caption"] for p in sorted(written, key=lambda p: p["image_id"])] == predictor.caption(
        images, beam_size=1, max_length=5
    )
    assert metrics["num_images"] == 3 and metrics["CIDEr"] >= 0.0 and 0.0 <= metrics["BLEU-4"] <= 1.0
