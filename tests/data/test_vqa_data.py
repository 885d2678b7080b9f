"""VQADataset: the VQAv2 questions/annotations layout (hand-written, with COCO-named images), the
files ShapesWorld writes, malformed records skipped and counted, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from glipv2.data import VQADataset, VQASample, generate_shapes_world
from glipv2.data.grounding import DataError, SkipCounter

SUBTYPE = "val2014"


def _answers(*words: str) -> list[dict[str, Any]]:
    return [{"answer": w, "answer_confidence": "yes", "answer_id": k} for k, w in enumerate(words, 1)]


QUESTIONS: dict[str, Any] = {
    "info": {"description": "hand-written VQAv2 sample"},
    "task_type": "Open-Ended",
    "data_type": "mscoco",
    "data_subtype": SUBTYPE,
    "license": {"name": "none"},
    "questions": [
        {"image_id": 42, "question": "What colour is the bus?", "question_id": 420},
        {"image_id": 42, "question": "How many wheels?", "question_id": 421},
        {"image_id": 7, "question": "Is it raining?", "question_id": 70},
    ],
}
ANNOTATIONS: dict[str, Any] = {
    "info": {},
    "data_type": "mscoco",
    "data_subtype": SUBTYPE,
    "annotations": [
        {
            "question_id": 70,  # out of order on purpose: samples follow the questions file
            "image_id": 7,
            "question_type": "is it",
            "answer_type": "yes/no",
            "multiple_choice_answer": "no",
            "answers": _answers(*["no"] * 9, "yes"),
        },
        {
            "question_id": 420,
            "image_id": 42,
            "question_type": "what color is the",
            "answer_type": "other",
            "multiple_choice_answer": "red",
            "answers": _answers(*["red"] * 7, "Red", "dark red", "orange"),
        },
        {
            "question_id": 421,
            "image_id": 42,
            "question_type": "how many",
            "answer_type": "number",
            "multiple_choice_answer": "4",
            "answers": _answers(*["4"] * 8, "four", "6"),
        },
    ],
}


def _write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


@pytest.fixture()
def vqa_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(questions file, annotations file, image folder) with the two COCO-named images."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(images / f"COCO_{SUBTYPE}_000000000042.jpg")
    Image.new("L", (20, 25), 128).save(images / f"COCO_{SUBTYPE}_000000000007.jpg")  # grey: read as RGB
    return _write(tmp_path / "q.json", QUESTIONS), _write(tmp_path / "a.json", ANNOTATIONS), images


def test_vqav2_files_are_read_with_coco_image_names(vqa_files: tuple[Path, Path, Path]) -> None:
    questions, annotations, images = vqa_files
    dataset = VQADataset(questions, images, annotations)
    dataset.set_epoch(3)  # nothing per epoch; must not fail
    assert len(dataset) == 3 and dataset.ann_file == annotations and not dataset.skips.as_dict()
    assert [q["question_id"] for q in dataset.questions] == [420, 421, 70]
    sample = dataset[0]
    assert isinstance(sample, VQASample)
    assert (sample.question, sample.question_id, sample.image_id) == ("What colour is the bus?", 420, 42)
    assert sample.answers == [*["red"] * 7, "Red", "dark red", "orange"]  # raw, not normalised
    assert (sample.question_type, sample.answer_type) == ("what color is the", "other")
    assert (
        sample.meta["multiple_choice_answer"] == "red" and sample.meta["answer_confidences"] == ["yes"] * 10
    )
    assert sample.image.mode == "RGB" and sample.image.size == (40, 30)
    last = dataset[2]
    assert last.image.mode == "RGB" and last.image.size == (20, 25)
    assert (last.answer_type, last.answers.count("no")) == ("yes/no", 9)
    assert dataset.image_path(7) == images / f"COCO_{SUBTYPE}_000000000007.jpg"
    assert [len(a) for a in dataset.answer_lists()] == [10, 10, 10]
    assert dataset.answer_lists()[1][-2:] == ["four", "6"]


def test_questions_alone_have_no_answers(vqa_files: tuple[Path, Path, Path]) -> None:
    questions, _, images = vqa_files
    dataset = VQADataset(questions, images)
    assert len(dataset) == 3 and dataset.ann_file == questions
    sample = dataset[1]
    assert sample.answers == [] and sample.question_type == "" and sample.answer_type == ""
    assert dataset.answer_lists() == [[], [], []]


def test_image_pattern_names_the_files(tmp_path: Path) -> None:
    (tmp_path / SUBTYPE).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / SUBTYPE / "img-7.png")
    questions = _write(tmp_path / "q.json", {**QUESTIONS, "questions": QUESTIONS["questions"][2:]})
    dataset = VQADataset(questions, tmp_path, image_pattern="{subtype}/img-{image_id}.png")
    assert dataset[0].image.size == (8, 8)
    with pytest.raises(ValueError, match="image_pattern"):
        VQADataset(questions, tmp_path, image_pattern="{nope}.png")


def test_a_missing_image_fails_only_its_sample(vqa_files: tuple[Path, Path, Path]) -> None:
    questions, annotations, images = vqa_files
    (images / f"COCO_{SUBTYPE}_000000000007.jpg").unlink()
    dataset = VQADataset(questions, images, annotations)
    assert dataset[0].question_id == 420
    with pytest.raises(ValueError, match="000000000007"):
        dataset[2]


def test_string_image_ids_need_a_file_list_or_a_pattern(tmp_path: Path) -> None:
    questions = _write(
        tmp_path / "q.json",
        {**QUESTIONS, "questions": [{"image_id": "x1", "question": "Why?", "question_id": 1}]},
    )
    with pytest.raises(DataError, match="integer id"):
        VQADataset(questions, tmp_path)[0]


# ----------------------------------------------------------------------------------- ShapesWorld files


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("vqa_shapes") / "val"
    return out, generate_shapes_world(out, 3, seed=5, split="val")


def test_shapes_world_files_read_as_vqav2(shapes: tuple[Path, dict[str, Any]]) -> None:
    out, summary = shapes
    dataset = VQADataset(out / "vqa_questions.json", out / "images", out / "vqa_annotations.json")
    assert not dataset.skips.as_dict()
    assert len(dataset) == summary["num_questions"] > 3 * 5
    assert dataset.data_subtype == "val"
    instances = json.loads((out / "instances.json").read_text())
    files = {im["id"]: im["file_name"] for im in instances["images"]}
    answer_types = {"count": "number", "existence": "yes/no", "relative position": "yes/no"}
    types = set()
    seen_images = set()
    for index in range(len(dataset)):
        sample = dataset[index] if dataset.questions[index]["image_id"] not in seen_images else None
        entry = dataset.questions[index]
        answers = dataset.answer_lists()[index]
        assert len(answers) == 10 and len(set(answers)) == 1
        if sample is not None:  # load each image once: the rest is the same code path
            seen_images.add(sample.image_id)
            assert sample.answers == answers and sample.meta["multiple_choice_answer"] == answers[0]
            assert sample.answer_type == answer_types.get(sample.question_type, "other")
            types.add(sample.question_type)
            saved = np.asarray(Image.open(out / "images" / files[sample.image_id]).convert("RGB"))
            assert np.array_equal(np.asarray(sample.image), saved)
        assert dataset.image_path(entry["image_id"]) == out / "images" / files[entry["image_id"]]
    assert seen_images == set(files)
    assert types <= {"count", "colour", "shape", "size", "existence", "relative position"}


# ----------------------------------------------------------------------------- bad records and files


def test_bad_records_are_skipped_and_counted(vqa_files: tuple[Path, Path, Path]) -> None:
    questions, annotations, images = vqa_files
    bad_questions = {
        **QUESTIONS,
        "questions": [
            *QUESTIONS["questions"],
            "not a question",
            {"image_id": 42, "question_id": 1},  # no text
            {"image_id": 42, "question": "Why?", "question_id": True},  # bool is no id
            {"image_id": [42], "question": "Why?", "question_id": 2},
            {"image_id": 42, "question": "Again?", "question_id": 420},  # duplicate id
            {"image_id": 42, "question": "Unanswered?", "question_id": 3},
            {"image_id": 42, "question": "Bad answers?", "question_id": 4},
            {"image_id": 42, "question": "Numbers?", "question_id": 5},
        ],
    }
    bad_annotations = {
        "annotations": [
            *ANNOTATIONS["annotations"],
            None,
            {"question_id": 999, "answers": _answers("a")},  # unknown question
            {"question_id": 4, "answers": "yes"},
            {"question_id": 5, "answers": [{"answer": 4}]},
            {"question_id": 70, "answers": _answers("again")},  # second annotation of one question
        ]
    }
    skips = SkipCounter()
    dataset = VQADataset(
        _write(questions, bad_questions), images, _write(annotations, bad_annotations), skips
    )
    assert [q["question_id"] for q in dataset.questions] == [420, 421, 70]
    assert dataset.skips is skips
    assert skips.as_dict() == {
        "question that is not an object": 1,
        "question without a question text": 1,
        "question without an integer question_id": 1,
        "question without an integer or string image_id": 1,
        "duplicate question_id": 1,
        "annotation that is not an object": 1,
        "annotation for an unknown question": 1,
        "annotation without a list of answers with a string 'answer'": 2,
        "duplicate annotation of a question": 1,
        "question without an annotation": 3,
    }
    assert dataset[2].answers.count("no") == 9  # the first annotation of 70 is kept


def test_bad_image_entries_are_skipped_and_counted(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    document = {
        **QUESTIONS,
        "images": [{"id": 42, "file_name": "a.png"}, {"id": 42, "file_name": "b.png"}, {"id": 7}, 5],
    }
    dataset = VQADataset(_write(tmp_path / "q.json", document), tmp_path)
    assert [q["question_id"] for q in dataset.questions] == [420, 421]
    assert dataset.skips.as_dict() == {
        "duplicate image id": 1,
        "image entry without an integer or string id and a file_name": 2,
        "question about an image not in 'images'": 1,
    }
    assert dataset[1].image.size == (8, 8)


@pytest.mark.parametrize(
    ("questions", "annotations", "message"),
    [
        (b"{not json", None, r"q\.json: questions file is not a JSON file"),
        ([1, 2], None, r"q\.json: not a VQA questions json \(a JSON object"),
        ({"images": []}, None, r"q\.json: not a VQA questions json \(no 'questions' list\)"),
        ({"questions": {"0": {}}}, None, r"q\.json: not a VQA questions json"),
        ({**QUESTIONS, "data_subtype": 2014}, None, r"q\.json: 'data_subtype' must be a string"),
        ({**QUESTIONS, "images": {}}, None, r"q\.json: 'images' must be a list"),
        (QUESTIONS, b"\xff\xfe\x00", r"a\.json: annotation file is not a JSON file"),
        (QUESTIONS, {"questions": []}, r"a\.json: not a VQA annotation json \(no 'annotations' list\)"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, questions: Any, annotations: Any, message: str) -> None:
    def write(name: str, document: Any) -> Path:
        path = tmp_path / name
        path.write_bytes(document if isinstance(document, bytes) else json.dumps(document).encode())
        return path

    q_file = write("q.json", questions)
    a_file = None if annotations is None else write("a.json", annotations)
    with pytest.raises(ValueError, match=message):  # DataError is a ValueError
        VQADataset(q_file, tmp_path, a_file)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.json: no such questions file"):
        VQADataset(tmp_path / "nothing.json", tmp_path)
