"""VQA samples read from the VQAv2 file layout: a questions json and, for training or scoring, an
annotations json with the ten raw annotator answers of each question.

Questions json (`v2_OpenEnded_mscoco_<subtype>_questions.json`)::

    {"info", "task_type", "data_type", "data_subtype",
     "questions": [{"image_id", "question", "question_id"}]}

Annotations json (`v2_mscoco_<subtype>_annotations.json`)::

    {"annotations": [{"question_id", "image_id", "question_type", "answer_type",
                      "multiple_choice_answer", "answers": [{"answer", "answer_confidence", "answer_id"}]}]}

The image of an image id is found through an `"images": [{"id", "file_name"}]` list in the questions
json when there is one (ShapesWorld writes it; VQAv2 does not), else through `image_pattern`, else by
the official COCO naming `COCO_<data_subtype>_<image_id:012d>.jpg`. Malformed records are skipped and
counted in a `SkipCounter`, as the detection readers do; a file that is not JSON or not of the right
top-level shape is a `ValueError` naming it. Answers are kept raw: normalising them (and building an
answer vocabulary) is the processing layer's job, so the same reader serves training and scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..processing.processor import load_image
from ..utils.io import read_json
from .grounding import DataError, SkipCounter, _is_id


@dataclass
class VQASample:
    """One question about one image. answers: the raw annotator answers (ten in VQAv2), empty when
    the dataset was read without an annotations file; meta: `multiple_choice_answer` and the
    `answer_confidences` when annotated, and the image `path`."""

    image: Image.Image
    question: str
    question_id: int
    image_id: int | str
    answers: list[str]
    question_type: str = ""
    answer_type: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Entry:
    question: dict[str, Any]
    answers: list[str] = field(default_factory=list)
    question_type: str = ""
    answer_type: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_document(path: str | Path, what: str, key: str) -> dict[str, Any]:
    """A json object with a list under `key`; anything else is a `DataError` naming the file."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a VQA {what} json (a JSON object expected, got {type(data).__name__})")
    if not isinstance(data.get(key), list):
        raise DataError(f"{path}: not a VQA {what} json (no '{key}' list)")
    return data


class VQADataset(torch.utils.data.Dataset):
    """VQAv2-format questions (and optionally annotations) as `VQASample`s, one per kept question,
    in the questions file's order; images are loaded lazily in `__getitem__` (a missing or corrupt
    image raises `ValueError`, which the trainer's SafeDataset counts as a skip)."""

    def __init__(
        self,
        questions_file: str | Path,
        image_dir: str | Path,
        annotations_file: str | Path | None = None,
        skips: SkipCounter | None = None,
        image_pattern: str | None = None,
    ) -> None:
        data = _read_document(questions_file, "questions", "questions")
        self.questions_file = Path(questions_file)
        self.annotations_file = None if annotations_file is None else Path(annotations_file)
        self.ann_file = self.annotations_file or self.questions_file
        self.image_dir = Path(image_dir)
        self.skips = skips if skips is not None else SkipCounter()
        subtype = data.get("data_subtype", "")
        if not isinstance(subtype, str):
            raise DataError(
                f"{questions_file}: 'data_subtype' must be a string, got {type(subtype).__name__}"
            )
        self.data_subtype = subtype
        self.image_pattern = image_pattern
        if image_pattern is not None:
            _check_pattern(image_pattern)
        self.file_names: dict[int | str, str] | None = None
        if "images" in data:
            self.file_names = self._read_images(data["images"], questions_file)

        entries = self._read_questions(data["questions"])
        if annotations_file is not None:
            entries = self._annotate(entries, _read_document(annotations_file, "annotation", "annotations"))
        self._entries = list(entries.values())
        self.questions: list[dict[str, Any]] = [e.question for e in self._entries]

    def _read_images(self, images: Any, path: str | Path) -> dict[int | str, str]:
        if not isinstance(images, list):
            raise DataError(f"{path}: 'images' must be a list, got {type(images).__name__}")
        names: dict[int | str, str] = {}
        for info in images:
            image_id = info.get("id") if isinstance(info, dict) else None
            file_name = info.get("file_name") if isinstance(info, dict) else None
            if not _is_id(image_id) or not isinstance(file_name, str) or not file_name:
                self.skips.add("image entry without an integer or string id and a file_name")
            elif image_id in names:
                self.skips.add("duplicate image id")
            else:
                names[image_id] = file_name
        return names

    def _read_questions(self, questions: list[Any]) -> dict[int, _Entry]:
        entries: dict[int, _Entry] = {}
        for q in questions:
            if not isinstance(q, dict):
                self.skips.add("question that is not an object")
                continue
            text, qid, image_id = q.get("question"), q.get("question_id"), q.get("image_id")
            if not isinstance(text, str) or not text.strip():
                self.skips.add("question without a question text")
            elif not _is_int(qid):
                self.skips.add("question without an integer question_id")
            elif not _is_id(image_id):
                self.skips.add("question without an integer or string image_id")
            elif qid in entries:
                self.skips.add("duplicate question_id")
            elif self.file_names is not None and image_id not in self.file_names:
                self.skips.add("question about an image not in 'images'")
            else:
                entries[qid] = _Entry(q)
        return entries

    def _annotate(self, entries: dict[int, _Entry], data: dict[str, Any]) -> dict[int, _Entry]:
        """Attach each annotation to its question; questions left without one are dropped (nothing
        to train on or score against) and counted."""
        annotated: dict[int, _Entry] = {}
        for ann in data["annotations"]:
            if not isinstance(ann, dict):
                self.skips.add("annotation that is not an object")
                continue
            qid = ann.get("question_id")
            entry = entries.get(qid) if _is_int(qid) else None
            if entry is None:
                self.skips.add("annotation for an unknown question")
                continue
            if qid in annotated:
                self.skips.add("duplicate annotation of a question")
                continue
            if "image_id" in ann and ann["image_id"] != entry.question["image_id"]:
                self.skips.add("annotation whose image_id differs from its question's")
                continue
            answers = ann.get("answers")
            if (
                not isinstance(answers, list)
                or not answers
                or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers)
            ):
                self.skips.add("annotation without a list of answers with a string 'answer'")
                continue
            entry.answers = [a["answer"] for a in answers]
            entry.question_type = _text(ann.get("question_type"))
            entry.answer_type = _text(ann.get("answer_type"))
            entry.meta = {"answer_confidences": [_text(a.get("answer_confidence")) for a in answers]}
            if isinstance(ann.get("multiple_choice_answer"), str):
                entry.meta["multiple_choice_answer"] = ann["multiple_choice_answer"]
            annotated[qid] = entry
        missing = len(entries) - len(annotated)
        if missing:
            self.skips.add("question without an annotation", missing)
        return {qid: entry for qid, entry in entries.items() if qid in annotated}

    def set_epoch(self, epoch: int) -> None:
        """Nothing is drawn per epoch."""

    def __len__(self) -> int:
        return len(self._entries)

    def answer_lists(self) -> list[list[str]]:
        """The raw answers of every kept question, in dataset order (for an answer vocabulary)."""
        return [list(e.answers) for e in self._entries]

    def image_path(self, image_id: int | str) -> Path:
        """The file of an image id: from the questions json's `images`, else `image_pattern`, else the
        official COCO name. Raises `ValueError` when it cannot be named."""
        if self.file_names is not None:
            if image_id not in self.file_names:
                raise DataError(f"image id {image_id!r} is not in the questions file's 'images'")
            return self.image_dir / self.file_names[image_id]
        if self.image_pattern is not None:
            try:
                return self.image_dir / self.image_pattern.format(
                    image_id=image_id, subtype=self.data_subtype
                )
            except (KeyError, IndexError, ValueError, TypeError) as err:
                raise DataError(
                    f"image_pattern {self.image_pattern!r} for image id {image_id!r}: {err}"
                ) from None
        if not _is_int(image_id):
            raise DataError(f"image id {image_id!r}: COCO file names need an integer id (give image_pattern)")
        return self.image_dir / f"COCO_{self.data_subtype}_{image_id:012d}.jpg"

    def __getitem__(self, index: int) -> VQASample:
        entry = self._entries[index]
        q = entry.question
        path = self.image_path(q["image_id"])
        return VQASample(
            image=load_image(path),
            question=q["question"],
            question_id=q["question_id"],
            image_id=q["image_id"],
            answers=list(entry.answers),
            question_type=entry.question_type,
            answer_type=entry.answer_type,
            meta={**entry.meta, "path": str(path)},
        )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _check_pattern(pattern: str) -> None:
    """An `image_pattern` must name a file for an integer id: checked once, up front."""
    try:
        name = pattern.format(image_id=1, subtype="x")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"image_pattern {pattern!r} is not a format string of {{image_id}} and {{subtype}} ({err})"
        ) from None
    if not name:
        raise ValueError(f"image_pattern {pattern!r} gives an empty file name")
