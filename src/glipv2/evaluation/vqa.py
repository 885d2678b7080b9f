"""VQA accuracy as the official VQA evaluator computes it (GT-Vision-Lab/VQA `vqaEval.py`).

A predicted answer is normalised with `normalize_answer` (newlines/tabs -> spaces, strip,
punctuation, number words, articles, contractions); the ground-truth answers of a question get the
punctuation step only, and only when they are not all the same string. A question's accuracy is the
mean over its (ten) ground-truth answers of min(1, matches among the other answers / 3).

Differences from the official code, on purpose:
- per-question-type and per-answer-type figures average each question's accuracy (the mean over
  its leave-one-out subsets, as the overall figure does); the official code averages the value of
  the *last* subset only, so its per-type figures can differ slightly from ours;
- "the other answers" are the other positions of the list (the official code drops every answer
  dict equal to the held-out one, the same thing when answer ids are distinct, as in VQAv2);
- a question without a prediction scores 0 and is counted in `num_missing` (the official code
  refuses a results file that does not cover every question); a prediction for a question outside
  the evaluated set, or a second prediction for a question, is an error (`ValueError`);
- figures are fractions in [0, 1], unrounded (the official ones are percentages rounded to 2).

Files: annotations as VQAv2's `*_annotations.json` (`{"annotations": [{"question_id",
"question_type", "answer_type", "answers": [{"answer", ...}], ...}]}`), questions as VQAv2's
`*_questions.json` (`{"questions": [{"question_id", "image_id", "question"}], "data_subtype"}`,
optionally with `"images": [{"id", "file_name"}]`), results as the official results format
(`[{"question_id", "answer"}]`, other keys ignored).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..processing.vqa_answers import normalize_answer, process_punctuation
from ..utils.io import read_json
from .base import check_keyed_results, is_int

Source = str | os.PathLike[str]


@dataclass(frozen=True)
class VQAAnnotation:
    """One annotated question: its ground-truth answers (as given) and its two type labels."""

    question_id: int
    answers: tuple[str, ...]
    question_type: str
    answer_type: str


def question_accuracy(answer: str, gt_answers: Sequence[str]) -> float:
    """The official accuracy of one predicted `answer` (normalised here) against the annotators'
    answers: mean over held-out answers of min(1, matches among the others / 3)."""
    if not gt_answers:
        raise ValueError("a question needs at least one ground-truth answer")
    predicted = normalize_answer(answer)
    gts = list(gt_answers)
    if len(set(gts)) > 1:  # official: punctuation only, and only when the annotators disagree
        gts = [process_punctuation(a) for a in gts]
    matches = sum(a == predicted for a in gts)
    # leave-one-out: the held-out answer matches or not, the others hold the rest of the matches
    return sum(min(1.0, (matches - (a == predicted)) / 3) for a in gts) / len(gts)


def load_vqa_annotations(
    source: Source | Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> dict[int, VQAAnnotation]:
    """question id -> annotation from a VQAv2 annotations file (a path), its parsed content, or its
    `annotations` list. Raises ValueError naming the first malformed entry (FileNotFoundError when
    the file is missing)."""
    where = f"{source}: " if isinstance(source, (str, os.PathLike)) else ""
    data = read_json(source, "annotation") if isinstance(source, (str, os.PathLike)) else source
    entries = data.get("annotations") if isinstance(data, Mapping) else data
    if not isinstance(entries, list):
        raise ValueError(f"{where}VQA annotations need an 'annotations' list")
    out: dict[int, VQAAnnotation] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not is_int(entry.get("question_id")):
            raise ValueError(f"{where}annotation {i}: needs an integer question_id, got {entry!r:.200}")
        qid = entry["question_id"]
        answers = entry.get("answers")
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, Mapping) and isinstance(a.get("answer"), str) for a in answers)
        ):
            raise ValueError(
                f"{where}question {qid}: 'answers' must be a non-empty list of {{'answer': str}}, "
                f"got {answers!r:.200}"
            )
        types = [entry.get(k, "unknown") for k in ("question_type", "answer_type")]
        if not all(isinstance(t, str) for t in types):
            raise ValueError(f"{where}question {qid}: question_type and answer_type must be strings")
        if qid in out:
            raise ValueError(f"{where}question {qid}: annotated twice")
        out[qid] = VQAAnnotation(qid, tuple(a["answer"] for a in answers), types[0], types[1])
    return out


def read_vqa_questions(source: Source | Mapping[str, Any]) -> dict[str, Any]:
    """A VQAv2 questions file (path or parsed content), checked: a `questions` list of entries with
    integer `question_id` and `image_id` and a string `question`, ids unique; an optional `images`
    list of `{"id", "file_name"}`. Returns the content. Raises ValueError naming the problem."""
    where = f"{source}: " if isinstance(source, (str, os.PathLike)) else ""
    data = read_json(source, "questions") if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(data, Mapping) or not isinstance(data.get("questions"), list):
        raise ValueError(f"{where}a VQA questions file is an object with a 'questions' list")
    seen: set[int] = set()
    for i, q in enumerate(data["questions"]):
        if (
            not isinstance(q, Mapping)
            or not is_int(q.get("question_id"))
            or not is_int(q.get("image_id"))
            or not isinstance(q.get("question"), str)
        ):
            raise ValueError(
                f"{where}question {i}: needs integer question_id and image_id and a string question, "
                f"got {q!r:.200}"
            )
        if q["question_id"] in seen:
            raise ValueError(f"{where}question id {q['question_id']} appears twice")
        seen.add(q["question_id"])
    images = data.get("images")
    if images is not None and not (
        isinstance(images, list)
        and all(
            isinstance(m, Mapping) and is_int(m.get("id")) and isinstance(m.get("file_name"), str)
            for m in images
        )
    ):
        raise ValueError(f"{where}'images' must be a list of {{'id': int, 'file_name': str}}")
    return dict(data)


def vqa_image_paths(questions: Mapping[str, Any], image_dir: Source) -> dict[int, Path]:
    """image id -> file for the images of a questions file: from its `images` list when it has one,
    else COCO naming `COCO_{data_subtype}_{image_id:012d}.jpg` under `image_dir`."""
    folder = Path(image_dir)
    if questions.get("images") is not None:
        return {m["id"]: folder / m["file_name"] for m in questions["images"]}
    subtype = questions.get("data_subtype")
    if not isinstance(subtype, str) or not subtype:
        raise ValueError(
            "the questions file has neither an 'images' list nor a 'data_subtype' (e.g. val2014) "
            "to name COCO images by"
        )
    return {
        q["image_id"]: folder / f"COCO_{subtype}_{q['image_id']:012d}.jpg" for q in questions["questions"]
    }


def check_vqa_results(results: Any, where: str = "") -> list[dict[str, Any]]:
    """Raise ValueError naming the first entry that is not `{"question_id": int, "answer": str}` or
    the first repeated question id; returns `results`."""
    return check_keyed_results(results, where, "question_id", "answer", "VQA", "question")


def read_vqa_results(path: Source) -> list[dict[str, Any]]:
    """An official VQA results file (`[{"question_id", "answer"}]`), checked; errors name the file."""
    return check_vqa_results(read_json(path, "predictions"), f"{path}: ")


class VQAEvaluator:
    """reset() -> process(predictions) -> evaluate() -> {"vqa": {...}} for VQAv2-style annotations.

    `questions` (a questions file, its content, or a list of question entries) restricts the
    evaluated set to its questions (all must be annotated); default: every annotated question."""

    def __init__(
        self,
        annotations: Source | Mapping[str, Any] | Sequence[Mapping[str, Any]],
        questions: Source | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.annotations = load_vqa_annotations(annotations)
        if questions is None:
            self.question_ids = list(self.annotations)
        else:
            entries = (
                read_vqa_questions(questions)["questions"]
                if isinstance(questions, (str, os.PathLike, Mapping))
                else read_vqa_questions({"questions": list(questions)})["questions"]
            )
            self.question_ids = [q["question_id"] for q in entries]
            unannotated = [q for q in self.question_ids if q not in self.annotations]
            if unannotated:
                raise ValueError(
                    f"{len(unannotated)} question(s) have no annotation, e.g. {unannotated[:5]}: "
                    "questions and annotations files do not match"
                )
        self._evaluated = set(self.question_ids)
        self.reset()

    def reset(self) -> None:
        self.answers: dict[int, str] = {}  # question id -> predicted answer, as given
        self.accuracies: dict[int, float] = {}  # after evaluate(): per question (missing: 0)

    def process(self, predictions: Iterable[Mapping[str, Any]]) -> None:
        """Add `{"question_id", "answer"}` entries. Raises ValueError for a malformed entry, an id
        outside the evaluated questions, or a second answer to a question."""
        for entry in predictions:
            qid, answer = entry.get("question_id"), entry.get("answer")
            if not is_int(qid) or not isinstance(answer, str):
                raise ValueError(
                    f"a prediction needs an integer question_id and a string answer: {entry!r:.200}"
                )
            if qid not in self._evaluated:
                raise ValueError(
                    f"prediction for question {qid}, not among the {len(self._evaluated)} evaluated"
                )
            if qid in self.answers:
                raise ValueError(f"a second prediction for question {qid}")
            self.answers[qid] = answer

    def predictions(self) -> list[dict[str, Any]]:
        """The predictions in the official results format, in question order."""
        return [{"question_id": q, "answer": self.answers[q]} for q in self.question_ids if q in self.answers]

    def evaluate(self) -> dict[str, Any]:
        """{"vqa": {"accuracy", "per_type", "per_answer_type", "num_questions", "num_missing"}}
        (accuracy None when no question is evaluated)."""
        per_type: dict[str, list[float]] = {}
        per_answer_type: dict[str, list[float]] = {}
        self.accuracies = {}
        for qid in self.question_ids:
            ann = self.annotations[qid]
            acc = question_accuracy(self.answers[qid], ann.answers) if qid in self.answers else 0.0
            self.accuracies[qid] = acc
            per_type.setdefault(ann.question_type, []).append(acc)
            per_answer_type.setdefault(ann.answer_type, []).append(acc)
        values = list(self.accuracies.values())
        return {
            "vqa": {
                "accuracy": sum(values) / len(values) if values else None,
                "per_type": {t: sum(v) / len(v) for t, v in sorted(per_type.items())},
                "per_answer_type": {t: sum(v) / len(v) for t, v in sorted(per_answer_type.items())},
                "num_questions": len(values),
                "num_missing": sum(q not in self.answers for q in self.question_ids),
            }
        }


def answer_questions(
    predictor: Any,
    questions: Sequence[Mapping[str, Any]],
    image_paths: Mapping[int, Path],
    results: list[dict[str, Any]],
    *,
    batch_size: int = 1,
    top_k: int = 1,
    progress: bool = True,
) -> int:
    """Run `predictor.answer` over the questions, `batch_size` questions per call, appending
    official results entries to `results` as batches finish (so an interrupted run keeps them);
    with `top_k` > 1 each entry also holds `"top_k": [{"answer", "score"}]`. A missing or unreadable
    image is one warning line (once per image) and its questions get no prediction. Returns the
    number of questions skipped."""
    from ..processing.processor import load_image

    skipped = 0
    unreadable: set[int] = set()  # image ids warned about once, not retried
    bar = tqdm(
        total=len(questions),
        desc="vqa",
        unit="question",
        dynamic_ncols=True,
        leave=False,
        disable=not progress,
    )
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        loaded: dict[int, Any] = {}
        batch, images = [], []
        for q in chunk:
            image_id = q["image_id"]
            if image_id in unreadable:
                loaded[image_id] = None
            if image_id not in loaded:
                path = image_paths.get(image_id)
                try:
                    if path is None:
                        raise ValueError(f"image {image_id}: not listed in the questions file's images")
                    loaded[image_id] = load_image(path)
                except ValueError as err:
                    loaded[image_id] = None
                    unreadable.add(image_id)
                    tqdm.write(f"glipv2 eval: vqa: {err}; its questions get no answer", file=sys.stderr)
            if loaded[image_id] is None:
                skipped += 1
                continue
            batch.append(q)
            images.append(loaded[image_id])
        if batch:
            answers = predictor.answer(images, [q["question"] for q in batch], top_k=top_k)
            for q, ranked in zip(batch, answers):
                entry: dict[str, Any] = {
                    "question_id": q["question_id"],
                    "answer": ranked[0][0] if ranked else "",
                }
                if top_k > 1:
                    entry["top_k"] = [{"answer": a, "score": float(s)} for a, s in ranked]
                results.append(entry)
        bar.update(len(chunk))
    bar.close()
    return skipped
