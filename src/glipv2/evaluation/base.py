"""The evaluator protocol (detectron2's `reset / process / evaluate`) and the loop that feeds it.

A benchmark is a list of `EvalSample`s (an image and the prompt to run on it) and an evaluator.
`run_benchmark` runs the `Predictor` over the samples — each DDP rank over its own share — and
hands the detections to the evaluator; `evaluate()` gathers every rank's predictions to rank 0 and
scores them there with the standard tool of the task. `DatasetEvaluators` feeds several evaluators
at once.

Evaluators keep their predictions as COCO results entries (`image_id`, `category_id`,
`bbox` = [x, y, w, h], `score`), so a predictions file written by one run can be scored again
without a model (`add_results`).
"""

from __future__ import annotations

import copy
import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
from tqdm import tqdm

from ..inference.detections import Detections
from ..processing.processor import load_image
from ..processing.prompts import Span
from ..utils.io import read_json

Results = list[dict[str, Any]]


@dataclass(frozen=True)
class EvalSample:
    """One image and the prompt to run on it.

    image_id: the id its predictions are filed under (COCO results `image_id`; for grounding
    data, the id of the image-sentence entry). A detection prompt gives `classes`; a grounding
    prompt gives `caption` and, per phrase, its character spans `spans` (phrase k -> label k)."""

    image: Path
    image_id: int
    classes: tuple[str, ...] | None = None
    caption: str | None = None
    spans: tuple[tuple[Span, ...], ...] | None = None

    def __post_init__(self) -> None:
        if (self.classes is None) == (self.caption is None):
            raise ValueError(f"sample {self.image_id}: give either classes or a caption")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (a collective: all ranks must call it); None on other ranks.
    Outside DDP: `[obj]`."""
    if not is_distributed():
        return [obj]
    main = dist.get_rank() == 0
    gathered: list[Any] | None = [None] * dist.get_world_size() if main else None
    dist.gather_object(obj, gathered, dst=0)  # only rank 0 holds everyone's predictions
    return gathered


class DatasetEvaluator(ABC):
    """reset() -> process(inputs, outputs) per batch -> evaluate() -> {task: {metric: value}}."""

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def process(self, inputs: Sequence[EvalSample], outputs: Sequence[Detections]) -> None: ...

    @abstractmethod
    def evaluate(self) -> dict[str, Any]: ...


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators fed the same inputs and outputs; `evaluate()` merges their metrics
    (two evaluators reporting the same task name is an error)."""

    def __init__(self, evaluators: Sequence[DatasetEvaluator]) -> None:
        self.evaluators = list(evaluators)

    @property
    def distributed(self) -> bool:
        return any(getattr(e, "distributed", True) for e in self.evaluators)

    def reset(self) -> None:
        for evaluator in self.evaluators:
            evaluator.reset()

    def process(self, inputs: Sequence[EvalSample], outputs: Sequence[Detections]) -> None:
        for evaluator in self.evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for evaluator in self.evaluators:
            metrics = evaluator.evaluate()
            clash = sorted(set(merged) & set(metrics))
            if clash:
                raise ValueError(f"two evaluators report {clash}")
            merged.update(metrics)
        return merged


class ResultsEvaluator(DatasetEvaluator):
    """An evaluator that collects COCO results entries and scores them on rank 0.

    Subclasses give `to_results` (detections of one sample -> entries) and `score` (all entries
    and the evaluated image ids -> metrics). `distributed=False` evaluates this process's
    predictions alone (e.g. rank 0 evaluating during training)."""

    def __init__(self, distributed: bool = True) -> None:
        self.distributed = distributed
        self.reset()

    def reset(self) -> None:
        self.results: Results = []
        self.image_ids: list[int] = []
        self.gathered: Results | None = None  # every rank's entries, on rank 0 after evaluate()

    def process(self, inputs: Sequence[EvalSample], outputs: Sequence[Detections]) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(outputs)} outputs for {len(inputs)} inputs")
        for sample, detections in zip(inputs, outputs):
            self.image_ids.append(sample.image_id)
            self.results.extend(self.to_results(sample, detections))

    def add_results(self, results: Results, image_ids: Iterable[int] | None = None) -> None:
        """Entries from a predictions file; `image_ids` are the images they cover (default: every
        image the evaluator knows, so an image without a prediction counts as a miss)."""
        self.validate_results(results)
        self.results.extend(results)
        self.image_ids.extend(self.known_image_ids() if image_ids is None else [int(i) for i in image_ids])

    def predictions(self) -> Results:
        """All ranks' entries after `evaluate()` (on rank 0), else this process's: what `glipv2 eval`
        writes as the predictions file beside the metrics."""
        return list(self.results if self.gathered is None else self.gathered)

    def evaluate(self) -> dict[str, Any]:
        parts = (
            gather_to_main((self.results, self.image_ids))
            if self.distributed
            else [(self.results, self.image_ids)]
        )
        if parts is None:
            return {}
        results = [r for part, _ in parts for r in part]
        image_ids = sorted({i for _, part in parts for i in part})
        self.gathered = results
        return self.score(results, image_ids)

    @abstractmethod
    def to_results(self, sample: EvalSample, detections: Detections) -> Results: ...

    @abstractmethod
    def score(self, results: Results, image_ids: list[int]) -> dict[str, Any]: ...

    @abstractmethod
    def known_image_ids(self) -> list[int]: ...

    def validate_results(self, results: Results) -> None:
        """Raise ValueError naming what is wrong with predictions read from a file (the default
        checks the entry layout; subclasses add unknown image / category ids)."""
        check_results_layout(results)


def check_results_layout(results: Any) -> None:
    """Raise ValueError naming the first entry that is not a COCO results entry: integer
    `image_id` and `category_id`, `bbox` of four finite numbers, a finite numeric `score`."""
    if not isinstance(results, list):
        raise ValueError("predictions must be a JSON list of COCO results entries")  # file content
    for i, entry in enumerate(results):
        if not isinstance(entry, dict) or not {"image_id", "category_id", "bbox", "score"} <= entry.keys():
            raise ValueError(
                f"prediction {i}: needs image_id, category_id, bbox and score, got {entry!r:.200}"
            )
        for key in ("image_id", "category_id"):
            if not is_int(entry[key]):
                raise ValueError(f"prediction {i}: {key} must be an integer, got {entry[key]!r:.100}")
        bbox = entry["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_finite(v) for v in bbox)):
            raise ValueError(f"prediction {i}: bbox must be [x, y, width, height], got {bbox!r:.200}")
        if not is_finite(entry["score"]):
            raise ValueError(f"prediction {i}: score must be a finite number, got {entry['score']!r:.100}")


def check_known_ids(
    results: Results, image_ids: Iterable[int], category_ids: Iterable[int] | None = None
) -> None:
    """Raise ValueError when predictions name images or categories the annotations do not have
    (categories unchecked when `category_ids` is None: grounding labels are per-entry phrases)."""
    images = sorted({r["image_id"] for r in results} - set(image_ids))
    categories = (
        [] if category_ids is None else sorted({r["category_id"] for r in results} - set(category_ids))
    )
    if images:
        raise ValueError(f"predictions for {len(images)} image ids not in the annotations: {images[:5]}")
    if categories:
        raise ValueError(f"predictions with category ids not in the annotations: {categories[:10]}")


def check_keyed_results(
    results: Any, where: str, id_key: str, text_key: str, what: str, item: str
) -> list[dict[str, Any]]:
    """Official text results (`[{id_key: int, text_key: str}]`: VQA answers, captions): raise
    ValueError naming the first entry of another shape, or the first repeated id; returns `results`.
    what: the results' name ("VQA", "caption"); item: what an id names ("question", "image")."""
    if not isinstance(results, list):
        raise ValueError(
            f"{where}{what} predictions must be a JSON list of {{'{id_key}', '{text_key}'}} entries"
        )
    seen: set[int] = set()
    for i, entry in enumerate(results):
        if (
            not isinstance(entry, dict)
            or not is_int(entry.get(id_key))
            or not isinstance(entry.get(text_key), str)
        ):
            raise ValueError(
                f"{where}prediction {i}: needs an integer {id_key} and a string {text_key}, got {entry!r:.200}"
            )
        if entry[id_key] in seen:
            raise ValueError(f"{where}prediction {i}: a second {text_key} for {item} {entry[id_key]}")
        seen.add(entry[id_key])
    return results


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Benchmark:
    """Samples to run and the evaluator that scores them. `detections_per_image` overrides the
    model's post-processing cap (LVIS keeps 300); `chunk_size` splits long class lists."""

    name: str
    samples: list[EvalSample]
    evaluator: DatasetEvaluator
    detections_per_image: int | None = None
    chunk_size: int | None = None

    def check_images(self) -> None:
        """Fail before any forward pass when the annotation file and the image folder disagree."""
        missing = [s.image for s in self.samples if not s.image.is_file()]
        if missing:
            shown = ", ".join(str(p) for p in missing[:3])
            raise FileNotFoundError(
                f"{self.name}: {len(missing)} of {len(self.samples)} images listed in the "
                f"annotations are not in the image folder (e.g. {shown})"
            )

    def check_prompts(self, predictor: Any) -> None:
        """Fail before any forward pass when a prompt does not fit the model's token slots (e.g. a
        long caption): builds every sample's prompt and positive map with the tokenizer alone."""
        from ..processing.prompts import grounding_prompt

        for sample in self.samples:
            try:
                if sample.classes is not None:
                    predictor.detection_vocabulary(
                        list(sample.classes), self.chunk_size
                    )  # cached per class list
                    continue
                prompt = grounding_prompt(sample.caption, spans=[list(s) for s in sample.spans or ()])
                tokens = predictor.processor.tokenize(prompt.text)
                prompt.positive_map(tokens.offsets[0], tokens.attention_mask[0])
            except ValueError as err:
                raise ValueError(f"{self.name}: image id {sample.image_id}: {err}") from None


def run_benchmark(
    predictor: Any, benchmark: Benchmark, batch_size: int = 1, progress: bool = True
) -> dict[str, Any]:
    """Run `predictor` (a `Predictor`) on the benchmark's samples (under DDP, with a distributed
    evaluator, this rank's share), feed the evaluator and return its metrics (on rank 0; {}
    elsewhere). Scores are kept down to the post-processing's own threshold (threshold 0 here), as
    the official evaluation does."""
    samples = benchmark.samples
    sharded = getattr(benchmark.evaluator, "distributed", True) and is_distributed()
    if sharded:  # else this process evaluates alone
        samples = samples[dist.get_rank() :: dist.get_world_size()]
    benchmark.evaluator.reset()
    # the caller's settings, with this benchmark's cap: a copy for these calls, so the (possibly
    # shared) predictor is never changed
    postprocessor = predictor.postprocessor
    if benchmark.detections_per_image is not None:
        postprocessor = copy.copy(postprocessor)
        postprocessor.detections_per_image = benchmark.detections_per_image
    bar = tqdm(
        total=len(samples),
        desc=benchmark.name,
        unit="image",
        dynamic_ncols=True,
        leave=False,
        disable=not progress or (sharded and dist.get_rank() != 0),
    )
    unreadable = 0
    # a window of several batches per call, so that the predictor can batch images of one size
    window = getattr(predictor, "read_ahead", batch_size)
    for start in range(0, len(samples), window):
        batch, images = [], []
        for sample in samples[start : start + window]:
            try:
                images.append(load_image(sample.image))
                batch.append(sample)
            # as `glipv2 predict`: the image is named and counted, and the others are scored
            # without it (it is not among the evaluated image ids, so it is not a miss)
            except ValueError as err:
                unreadable += 1
                tqdm.write(f"glipv2 eval: {benchmark.name}: {err}", file=sys.stderr)
        if batch:
            vocabularies = [vocabulary_of(predictor, s, benchmark.chunk_size) for s in batch]
            detections = predictor.predict(images, vocabularies, threshold=0.0, postprocessor=postprocessor)
            benchmark.evaluator.process(batch, detections)
        bar.update(len(samples[start : start + window]))
    bar.close()
    metrics = benchmark.evaluator.evaluate()
    if unreadable:
        tqdm.write(
            f"glipv2 eval: {benchmark.name}: {unreadable} of {len(samples)} image(s) unreadable, "
            "scored without them",
            file=sys.stderr,
        )
        if metrics:  # rank 0 (under DDP the count is this rank's share)
            metrics["unreadable_images"] = unreadable
    return metrics


def vocabulary_of(predictor: Any, sample: EvalSample, chunk_size: int | None = None) -> Any:
    if sample.classes is not None:
        return predictor.detection_vocabulary(list(sample.classes), chunk_size)
    return predictor.grounding_vocabulary(sample.caption, spans=[list(s) for s in sample.spans or ()])


def read_results(path: str | Path) -> Results:
    """A COCO results json (a list of entries) with a one-line error when it is not one."""
    results = read_json(path, "predictions")
    check_results_layout(results)
    return results
