"""Multi-task training data: several task datasets, batches of one task each, mixed by weight.

A batch holds one task. The tasks need different text (a class prompt, a sentence, a question, a
causally read caption), different heads and, for captions, a different mode of the core (causal
text, an image stream that reads no text): one task per batch keeps every forward in one mode with
no per-sample masks, and a batch costs what its task costs. The weights set how often each task's
batches come: in an epoch of N batches (N: the batches all tasks' samples fill), task t has
round(N · w_t / Σw) of them (at least one), drawn through seeded permutations of its samples
(cycled when it needs more than its data holds), in a seeded order. The plan depends on (seed,
epoch) only, so every DDP rank runs the same task in a step, and a resumed run continues it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from ..modeling.heads import next_token_labels
from ..processing.image import image_to_tensor
from ..processing.processor import GLIPv2Processor, official_resize_size
from ..processing.vqa_answers import answer_scores
from .captions import CaptionSample
from .collate import EmptyBatch, Skipped, TrainingBatch, _batch_seed
from .vqa import VQASample

# the tasks a mixture knows, and the heads each one trains (None: the localisation heads that want
# to run — grounding, mask, inter, mlm)
TASK_HEADS: dict[str, tuple[str, ...] | None] = {
    "detection": None,
    "grounding": None,
    "vqa": ("vqa",),
    "caption": ("caption",),
}


class TaskMixture(torch.utils.data.Dataset):
    """Several datasets (task name -> dataset, each item a sample of that task) as one index space:
    task t's items are the indices offset_t … offset_t + len_t − 1. `epoch_batches` is the plan the
    trainer follows instead of one permutation of everything."""

    def __init__(
        self, datasets: Mapping[str, torch.utils.data.Dataset], weights: Mapping[str, float]
    ) -> None:
        unknown = sorted(set(datasets) - set(TASK_HEADS))
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASK_HEADS)}")
        missing = sorted(set(datasets) - set(weights))
        if missing:
            raise ValueError(f"no sampling weight for task(s) {', '.join(missing)}")
        if any(weights[t] < 0 for t in datasets) or not any(weights[t] > 0 for t in datasets):
            raise ValueError("task weights must be >= 0, and one of them > 0")
        self.datasets = {t: d for t, d in datasets.items() if weights[t] > 0}
        self.weights = {t: float(weights[t]) for t in self.datasets}
        self.offsets: dict[str, int] = {}
        total = 0
        for task, dataset in self.datasets.items():
            if len(dataset) == 0:  # type: ignore[arg-type]
                raise ValueError(f"the {task} data has no samples")
            self.offsets[task] = total
            total += len(dataset)  # type: ignore[arg-type]
        self.total = total

    def __len__(self) -> int:
        return self.total

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets.values():
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)

    def task_of(self, index: int) -> str:
        for task in reversed(list(self.offsets)):
            if index >= self.offsets[task]:
                return task
        raise IndexError(index)

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.total:
            raise IndexError(f"index {index} out of range for {self.total} samples")
        task = self.task_of(index)
        sample = self.datasets[task][index - self.offsets[task]]
        if not isinstance(sample, Skipped):
            sample.meta["task"] = task
        return sample

    def batches_per_task(self, global_batch: int) -> dict[str, int]:
        """Global batches of each task in one epoch (see the module docstring)."""
        lengths = {t: len(d) for t, d in self.datasets.items()}  # type: ignore[arg-type]
        n = max(1, sum(length // global_batch for length in lengths.values()))
        total_weight = sum(self.weights.values())
        return {t: max(1, round(n * w / total_weight)) for t, w in self.weights.items()}

    def epoch_batches(self, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
        """This rank's batches of one epoch: global batches of `batch_size × world` indices of one
        task each, rank r taking slice r of each."""
        global_size = batch_size * world
        plan: list[list[int]] = []
        for task_number, (task, count) in enumerate(self.batches_per_task(global_size).items()):
            length = len(self.datasets[task])  # type: ignore[arg-type]
            stream: list[int] = []
            cycle = 0
            while len(stream) < count * global_size:  # cycle through fresh permutations as needed
                generator = torch.Generator().manual_seed(_batch_seed([seed, epoch, task_number, cycle]))
                stream += torch.randperm(length, generator=generator).tolist()
                cycle += 1
            offset = self.offsets[task]
            plan += [
                [offset + i for i in stream[b * global_size : (b + 1) * global_size]] for b in range(count)
            ]
        order = torch.randperm(
            len(plan), generator=torch.Generator().manual_seed(_batch_seed([seed, epoch]))
        ).tolist()
        return [plan[i][rank * batch_size : (rank + 1) * batch_size] for i in order]


class RandomResizeImage:
    """The image part of `RandomResize` for samples without boxes (questions, captions): shorter side
    drawn from `min_sizes`, longer side at most `max_size`. No flip: "left of" would become false."""

    def __init__(self, min_sizes: Sequence[int], max_size: int) -> None:
        self.min_sizes = list(min_sizes)
        self.max_size = max_size

    def __call__(self, sample: Any, rng: random.Random) -> Any:
        width, height = sample.image.size
        h, w = official_resize_size(width, height, rng.choice(self.min_sizes), self.max_size)
        if (h, w) == (height, width):
            return sample
        return replace(sample, image=sample.image.resize((w, h), Image.BILINEAR))


class VQACollator:
    """`VQASample`s -> a `TrainingBatch` for the VQA head: the questions as the prompt, and per
    question `vqa_scores` (A,) = min(1, annotators who gave the answer / 3) over the model's
    answer vocabulary (answers outside it add nothing)."""

    def __init__(self, processor: GLIPv2Processor) -> None:
        if not processor.answers:
            raise ValueError(
                "VQA training needs a model with an answer vocabulary (GLIPv2Config.vqa_answers)"
            )
        self.processor = processor
        self.index = {answer: i for i, answer in enumerate(processor.answers)}

    def __call__(self, samples: list[VQASample | Skipped]) -> TrainingBatch | EmptyBatch:
        skipped = [s.reason for s in samples if isinstance(s, Skipped)]
        good = [s for s in samples if isinstance(s, VQASample)]
        if not good:
            return EmptyBatch(skipped)
        pixel_values, image_sizes = _images(self.processor, [s.image for s in good])
        tokens = self.processor.tokenize([s.question for s in good])
        targets = []
        for sample in good:
            scores = torch.zeros(len(self.index))
            for i, score in answer_scores(sample.answers, self.index).items():
                scores[i] = score
            targets.append({"vqa_scores": scores})
        return TrainingBatch(
            pixel_values,
            image_sizes,
            tokens.input_ids,
            tokens.attention_mask,
            targets,
            [s.question for s in good],
            [s.image_id for s in good],
            skipped,
            heads=TASK_HEADS["vqa"],
            task="vqa",
        )


class CaptionCollator:
    """`CaptionSample`s -> a `TrainingBatch` for the caption head: one of each image's captions
    (drawn from the sample's key, so reproducibly and differently every epoch) as the prompt, and
    its next-token labels."""

    def __init__(self, processor: GLIPv2Processor) -> None:
        self.processor = processor

    def __call__(self, samples: list[CaptionSample | Skipped]) -> TrainingBatch | EmptyBatch:
        skipped = [s.reason for s in samples if isinstance(s, Skipped)]
        skipped += [
            "image without a caption" for s in samples if isinstance(s, CaptionSample) and not s.captions
        ]
        good = [s for s in samples if isinstance(s, CaptionSample) and s.captions]
        if not good:
            return EmptyBatch(skipped)
        pixel_values, image_sizes = _images(self.processor, [s.image for s in good])
        chosen = [
            s.captions[random.Random(_batch_seed([s.meta.get("key"), "caption"])).randrange(len(s.captions))]
            for s in good
        ]
        tokens = self.processor.tokenize(chosen)
        labels = next_token_labels(tokens.input_ids, tokens.attention_mask)
        return TrainingBatch(
            pixel_values,
            image_sizes,
            tokens.input_ids,
            tokens.attention_mask,
            [{"caption_labels": row} for row in labels],
            chosen,
            [s.image_id for s in good],
            skipped,
            heads=TASK_HEADS["caption"],
            task="caption",
        )


class MultiTaskCollator:
    """Dispatch a batch (all of one task) to that task's collator by the sample type."""

    def __init__(self, collators: Mapping[type, Any]) -> None:
        self.collators = dict(collators)
        self.processor = next(iter(self.collators.values())).processor

    def __call__(self, samples: list[Any]) -> TrainingBatch | EmptyBatch:
        kinds = {type(s) for s in samples if not isinstance(s, Skipped)}
        if not kinds:
            return EmptyBatch([s.reason for s in samples])
        if len(kinds) > 1:
            raise ValueError(
                f"a batch mixes samples of {sorted(k.__name__ for k in kinds)}: one task per batch"
            )
        kind = kinds.pop()
        if kind not in self.collators:
            raise ValueError(f"no collator for {kind.__name__} samples")
        batch = self.collators[kind](samples)
        if isinstance(batch, TrainingBatch):
            first = next(s for s in samples if not isinstance(s, Skipped))
            batch.task = first.meta.get("task", batch.task)
        return batch


def _images(processor: GLIPv2Processor, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = [image_to_tensor(image, processor.pixel_mean, processor.pixel_std) for image in images]
    batch = processor.batch_images(tensors, [tuple(t.shape[1:]) for t in tensors])
    return batch.pixel_values, batch.image_sizes
