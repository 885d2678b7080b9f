"""VQA answer normalisation, vocabulary and soft scores, the official accuracy, and `glipv2 eval vqa`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from glipv2.cli import main
from glipv2.evaluation.vqa import VQAEvaluator, question_accuracy, read_vqa_results
from glipv2.processing.vqa_answers import (
    answer_scores,
    build_answer_vocabulary,
    normalize_answer,
    process_punctuation,
)


def test_normalize_answer_follows_the_official_steps() -> None:
    assert normalize_answer("Two") == "2"  # number words
    assert normalize_answer("none") == "0"
    assert normalize_answer("a dog") == "dog" and normalize_answer("The  An dog") == "dog"  # articles
    assert normalize_answer("yes.") == "yes" and normalize_answer(" yes?\n") == "yes"
    assert normalize_answer("dont") == "don’t"  # the official table's curly apostrophe
    assert normalize_answer("don't") == "don t"  # a quote touching no space becomes a space
    assert normalize_answer("it's red") == "it s red"
    assert normalize_answer("' hi") == "hi"  # ... and is deleted when one touches a space
    assert normalize_answer("1,000") == "1000"  # digit,digit: every mark deleted
    assert normalize_answer("wow!") == "wow!"  # "!" is not in the official list
    # the period regex: any period not followed by a digit goes (the look-behind typo), decimals stay
    assert process_punctuation("2.5") == "2.5" and process_punctuation("5.") == "5"
    assert process_punctuation("e.g.") == "eg"
    assert process_punctuation("." * 40) == "." * 8  # at most 32 removed: re.UNICODE passed as count


def test_answer_vocabulary_counts_questions_and_is_ordered() -> None:
    answer_lists = [
        ["yes"] * 10,  # ten annotators, one question: counts once
        ["no", "Yes.", "no"],
        ["two", "2", "dog"],
        ["a dog", "cat"],
        ["", " "],  # empty answers skipped
    ]
    # yes: 2 questions, 2: 1, dog: 2, no: 1, cat: 1 -> by count, then alphabetically
    assert build_answer_vocabulary(answer_lists) == ["dog", "yes", "2", "cat", "no"]
    assert build_answer_vocabulary(answer_lists, min_count=2) == ["dog", "yes"]
    with pytest.raises(ValueError):
        build_answer_vocabulary(answer_lists, min_count=0)


def test_answer_scores_are_min_one_annotators_over_three() -> None:
    index = {"yes": 0, "no": 1, "2": 2}
    answers = ["yes", "Yes", "no", "two", "2", "2", "2", "maybe"]
    # yes: 2 annotators -> 2/3; no: 1 -> 1/3; "2" (with "two"): 4 -> 1; maybe: not in the vocabulary
    assert answer_scores(answers, index) == pytest.approx({0: 2 / 3, 1: 1 / 3, 2: 1.0})


# Hand-worked questions. For m ground-truth answers equal to the (normalised) prediction among ten, a
# held-out matching answer leaves m-1 matches (score min(1, (m-1)/3)), a held-out other answer m
# (min(1, m/3)); accuracy = the mean of the ten.
ANNOTATIONS: list[dict[str, Any]] = [
    # "two" -> "2"; m = 2: (2 * 1/3 + 8 * 2/3) / 10 = 18/30 = 0.6
    {"question_id": 1, "question_type": "how many", "answer_type": "number", "gts": ["2"] * 2 + ["3"] * 8},
    # "a dog" -> "dog"; m = 3: (3 * 2/3 + 7 * 1) / 10 = 0.9
    {
        "question_id": 2,
        "question_type": "what animal is",
        "answer_type": "other",
        "gts": ["dog"] * 3 + ["cat"] * 7,
    },
    # "yes." -> "yes"; all ten agree, m = 10: 1.0
    {"question_id": 3, "question_type": "is the", "answer_type": "yes/no", "gts": ["yes"] * 10},
    # "dont" -> "don’t"; m = 1: (1 * 0 + 9 * 1/3) / 10 = 0.3 (the official per-type value would be the
    # last subset's, 1/3)
    {"question_id": 4, "question_type": "is the", "answer_type": "yes/no", "gts": ["don’t"] + ["no"] * 9},
    # "don't" -> "don t"; the answers disagree, so theirs are punctuation-processed too: "don't" ->
    # "don t", m = 2: 0.6
    {"question_id": 5, "question_type": "what is", "answer_type": "other", "gts": ["don't"] * 2 + ["no"] * 8},
    # no prediction: 0
    {"question_id": 6, "question_type": "how many", "answer_type": "number", "gts": ["1"] * 10},
]
PREDICTIONS = [
    {"question_id": 1, "answer": "two"},
    {"question_id": 2, "answer": "a dog"},
    {"question_id": 3, "answer": "yes."},
    {"question_id": 4, "answer": "dont"},
    {"question_id": 5, "answer": "don't"},
]
EXPECTED = {
    "accuracy": (0.6 + 0.9 + 1.0 + 0.3 + 0.6 + 0.0) / 6,
    "per_type": {
        "how many": (0.6 + 0.0) / 2,
        "is the": (1.0 + 0.3) / 2,
        "what animal is": 0.9,
        "what is": 0.6,
    },
    "per_answer_type": {"number": 0.3, "other": (0.9 + 0.6) / 2, "yes/no": 0.65},
    "num_questions": 6,
    "num_missing": 1,
}


def vqa_annotations() -> dict[str, Any]:
    return {
        "annotations": [
            {
                "question_id": a["question_id"],
                "image_id": 100 + a["question_id"] % 2,
                "question_type": a["question_type"],
                "answer_type": a["answer_type"],
                "multiple_choice_answer": a["gts"][0],
                "answers": [
                    {"answer": g, "answer_confidence": "yes", "answer_id": k + 1}
                    for k, g in enumerate(a["gts"])
                ],
            }
            for a in ANNOTATIONS
        ]
    }


def vqa_questions() -> dict[str, Any]:
    return {
        "data_subtype": "val2014",
        "questions": [
            {"question_id": a["question_id"], "image_id": 100 + a["question_id"] % 2, "question": "?"}
            for a in ANNOTATIONS
        ],
    }


def assert_metrics(got: dict[str, Any]) -> None:
    assert got["accuracy"] == pytest.approx(EXPECTED["accuracy"], abs=1e-12)
    for key in ("per_type", "per_answer_type"):
        assert got[key] == pytest.approx(EXPECTED[key], abs=1e-12)
    assert (got["num_questions"], got["num_missing"]) == (6, 1)


def test_hand_worked_accuracies() -> None:
    for a, p, want in zip(ANNOTATIONS, PREDICTIONS, (0.6, 0.9, 1.0, 0.3, 0.6)):
        assert question_accuracy(p["answer"], a["gts"]) == pytest.approx(want, abs=1e-12)
    # the annotators agree on "don't": theirs stay as is and "don t" matches none
    assert question_accuracy("don't", ["don't"] * 10) == 0.0
    evaluator = VQAEvaluator(vqa_annotations())
    evaluator.process(PREDICTIONS)
    assert_metrics(evaluator.evaluate()["vqa"])
    assert evaluator.accuracies[6] == 0.0
    evaluator.reset()
    assert evaluator.evaluate()["vqa"]["num_missing"] == 6


def test_questions_restrict_and_bad_predictions_are_errors() -> None:
    evaluator = VQAEvaluator(vqa_annotations(), questions=vqa_questions()["questions"][:2])
    with pytest.raises(ValueError, match="question 3"):
        evaluator.process([{"question_id": 3, "answer": "yes"}])  # outside the evaluated questions
    evaluator.process(PREDICTIONS[:1])
    with pytest.raises(ValueError, match="second"):
        evaluator.process(PREDICTIONS[:1])
    metrics = evaluator.evaluate()["vqa"]
    assert metrics["accuracy"] == pytest.approx(0.3) and metrics["num_missing"] == 1
    with pytest.raises(ValueError, match="no annotation"):
        VQAEvaluator(vqa_annotations(), questions=[{"question_id": 99, "image_id": 1, "question": "?"}])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"question_id": 1}, "JSON list"),
        ([{"question_id": "1", "answer": "yes"}], "prediction 0"),
        ([{"question_id": 1}], "prediction 0"),
        ([{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}], "second answer"),
    ],
)
def test_read_vqa_results_rejects_bad_files(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        read_vqa_results(path)


def write_vqa_files(folder: Path) -> tuple[Path, Path, Path]:
    files = []
    for name, content in (
        ("questions.json", vqa_questions()),
        ("annotations.json", vqa_annotations()),
        ("results.json", PREDICTIONS),
    ):
        (folder / name).write_text(json.dumps(content))
        files.append(folder / name)
    return files[0], files[1], files[2]


def test_eval_vqa_command_scores_a_results_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions, annotations, results = write_vqa_files(tmp_path)
    out = tmp_path / "out" / "metrics.json"
    args = [
        "eval",
        "vqa",
        "--predictions",
        str(results),
        "--questions",
        str(questions),
        "--ann",
        str(annotations),
    ]
    assert main([*args, "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert list(metrics) == ["vqa"]
    assert_metrics(metrics["vqa"])
    assert json.loads((tmp_path / "out" / "metrics_predictions.json").read_text()) == PREDICTIONS
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "what animal is" in printed and "yes/no" in printed

    # bad input: one line on stderr, exit 2, nothing written
    (tmp_path / "bad.json").write_text(json.dumps([{"question_id": 1}]))
    bad = ["eval", "vqa", "--predictions", str(tmp_path / "bad.json"), "--questions", str(questions)]
    assert main([*bad, "--ann", str(annotations), "--out", str(tmp_path / "m2.json")]) == 2
    err = capsys.readouterr().err
    assert "prediction 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m2.json").exists()
    # the predictions file beside --out would overwrite the input results file
    assert main([*args, "--out", str(tmp_path / "results.json")]) == 2  # --out is an input
    (tmp_path / "m_predictions.json").write_text(json.dumps(PREDICTIONS))
    again = [
        "eval",
        "vqa",
        "--predictions",
        str(tmp_path / "m_predictions.json"),
        "--questions",
        str(questions),
    ]
    assert main([*again, "--ann", str(annotations), "--out", str(tmp_path / "m.json")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    # vqa without --questions; a caption option on vqa
    assert (
        main(["eval", "vqa", "--predictions", str(results), "--ann", str(annotations), "--out", str(out)])
        == 2
    )
    assert main([*args, "--beam-size", "2", "--out", str(out)]) == 2


class StubPredictor:
    """The `Predictor.answer` / `Predictor.caption` interface, answering from the question text."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def answer(
        self, images: list[Any], questions: list[str], top_k: int = 1
    ) -> list[list[tuple[str, float]]]:
        self.calls.append(len(images))
        return [[(q.split()[-1], 0.9), ("no", 0.1)][:top_k] for q in questions]

    def caption(
        self, images: list[Any], beam_size: int = 3, max_length: int = 30, length_penalty: float = 1.0
    ) -> list[str]:
        self.calls.append(len(images))
        return [f"a picture {k}" for k in range(len(images))]


def test_model_runs_skip_missing_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from glipv2.evaluation.caption import caption_images
    from glipv2.evaluation.vqa import answer_questions, vqa_image_paths

    Image.new("RGB", (8, 8)).save(tmp_path / "COCO_val2014_000000000101.jpg")  # image 100 is missing
    questions = [{"question_id": q, "image_id": 100 + q % 2, "question": f"is it {q}"} for q in range(1, 6)]
    paths = vqa_image_paths({"data_subtype": "val2014", "questions": questions}, tmp_path)
    results: list[dict[str, Any]] = []
    stub = StubPredictor()
    skipped = answer_questions(stub, questions, paths, results, batch_size=2, top_k=2, progress=False)
    assert skipped == 2 and [r["question_id"] for r in results] == [1, 3, 5]
    assert results[0] == {
        "question_id": 1,
        "answer": "1",
        "top_k": [{"answer": "1", "score": 0.9}, {"answer": "no", "score": 0.1}],
    }
    assert stub.calls == [1, 1, 1]
    assert capsys.readouterr().err.count("no such image file") == 1  # one line per missing image
    results = []
    assert (
        caption_images(stub, {101: paths[101], 100: paths[100]}, results, batch_size=2, progress=False) == 1
    )
    assert results == [{"image_id": 101, "caption": "a picture 0"}]
