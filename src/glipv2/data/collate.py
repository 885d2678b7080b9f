"""Batches for training: padded images, tokenized captions, and per-image targets for the losses.

Targets follow the criterion's contract (`glipv2.modeling.criterion`): `boxes` (N, 4) legacy xyxy in
the model's input frame, `positive_map` (N, T) — the tokens of the phrase naming each box —,
`labels` (N,) phrase identities and `token_labels` (T,) the identity of the phrase each token
belongs to (-1 for none), which L_inter uses to find positives across images; and, for samples
with instance masks, `masks` (N, h, w) uint8 in the same frame (L_mask); with MLM corruption on,
`mlm_labels` (T,) the original ids of the corrupted tokens (-100 elsewhere), the `input_ids`
holding the corrupted ones (L_mlm).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from ..processing.image import image_to_tensor
from ..processing.processor import GLIPv2Processor
from ..processing.prompts import span_tokens
from .grounding import GroundingSample
from .mlm import MaskingVocab, mask_tokens


@dataclass
class Skipped:
    """Placeholder for a sample that could not be loaded; counted by the collator."""

    reason: str


@dataclass
class EmptyBatch:
    """A batch none of whose samples could be used: only the reasons, so that they are counted (a
    wrong image folder must show up as "no such image file" × N, not as nothing)."""

    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return 0


@dataclass
class TrainingBatch:
    """pixel_values (B, 3, H, W), image_sizes (B, 2); input_ids, attention_mask (B, T); targets: one
    dict per image; skipped: reasons of the samples of this batch that were dropped."""

    pixel_values: torch.Tensor
    image_sizes: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: list[dict[str, torch.Tensor]]
    captions: list[str]
    image_ids: list[Any]
    skipped: list[str] = field(default_factory=list)
    # the heads this batch trains (None: the localisation heads; see `glipv2.data.tasks`) and its task
    heads: tuple[str, ...] | None = None
    task: str = "grounding"

    def __len__(self) -> int:
        return int(self.pixel_values.shape[0])

    def to(self, device: torch.device | str) -> TrainingBatch:
        return TrainingBatch(
            self.pixel_values.to(device),
            self.image_sizes.to(device),
            self.input_ids.to(device),
            self.attention_mask.to(device),
            [{k: v.to(device) for k, v in t.items()} for t in self.targets],
            self.captions,
            self.image_ids,
            self.skipped,
            self.heads,
            self.task,
        )


class GroundingCollator:
    """`GroundingSample`s -> `TrainingBatch` with the model's image and text pre-processing. A
    phrase cut off by the token limit loses its boxes (as official `od_to_grounding`).

    mlm: corrupt the tokens for L_mlm with this vocabulary (see `glipv2.data.mlm`); the random
    choice is drawn from the batch's samples' keys (`sample.meta["key"]`, set by `SafeDataset`:
    seed, epoch, index), so it does not depend on the loader's workers or the process."""

    def __init__(
        self, processor: GLIPv2Processor, mlm: MaskingVocab | None = None, mlm_probability: float = 0.15
    ) -> None:
        self.processor = processor
        self.mlm = mlm
        self.mlm_probability = mlm_probability

    def __call__(self, samples: list[GroundingSample | Skipped]) -> TrainingBatch | EmptyBatch:
        skipped = [s.reason for s in samples if isinstance(s, Skipped)]
        good = [s for s in samples if isinstance(s, GroundingSample)]
        for sample in good:
            skipped.extend(sample.meta.get("dropped", []))
        if not good:
            return EmptyBatch(skipped)
        tensors = [
            image_to_tensor(s.image, self.processor.pixel_mean, self.processor.pixel_std) for s in good
        ]
        batch = self.processor.batch_images(tensors, [t.shape[1:] for t in tensors])
        tokens = self.processor.tokenize([s.caption for s in good])
        targets = []
        for i, sample in enumerate(good):
            offsets, mask = tokens.offsets[i], tokens.attention_mask[i]
            token_labels = torch.full((offsets.shape[0],), -1, dtype=torch.long)
            for label, spans in sample.phrases.items():
                token_labels[span_tokens(offsets, spans, mask)] = label
            box_tokens = [
                span_tokens(offsets, sample.spans_of_box(j), mask) for j in range(len(sample.boxes))
            ]
            keep = [j for j, hit in enumerate(box_tokens) if bool(hit.any())]
            if len(keep) < len(box_tokens):
                skipped.extend(["box whose phrase is past the token limit"] * (len(box_tokens) - len(keep)))
            positive_map = (
                torch.stack([box_tokens[j] for j in keep]).float()
                if keep
                else torch.zeros(0, offsets.shape[0])
            )
            target = {
                "boxes": sample.boxes[keep].float(),
                "positive_map": positive_map,
                "labels": sample.box_labels[keep],
                "token_labels": token_labels,
            }
            if sample.masks is not None:
                target["masks"] = sample.masks[keep].to(torch.uint8)
            targets.append(target)
        input_ids = tokens.input_ids
        if self.mlm is not None:
            generator = torch.Generator().manual_seed(_batch_seed([s.meta.get("key") for s in good]))
            input_ids, mlm_labels = mask_tokens(
                input_ids, tokens.attention_mask, self.mlm, self.mlm_probability, generator=generator
            )
            for target, labels in zip(targets, mlm_labels):
                target["mlm_labels"] = labels
        return TrainingBatch(
            batch.pixel_values,
            batch.image_sizes,
            input_ids,
            tokens.attention_mask,
            targets,
            [s.caption for s in good],
            [s.image_id for s in good],
            skipped,
        )


class SafeDataset(torch.utils.data.Dataset):
    """Wraps a dataset so that a sample that fails to load (corrupt image, missing field) becomes
    a `Skipped` marker instead of an exception that would stop the epoch; `transform(sample, rng)`
    is applied with a per-(seed, epoch, index) random generator, so augmentation is reproducible."""

    def __init__(self, dataset: torch.utils.data.Dataset, transform: Any = None, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> GroundingSample | Skipped:
        try:
            sample = self.dataset[index]
            sample.meta["key"] = (self.seed, self.epoch, int(index))
            if self.transform is not None:
                # a tuple of ints hashes the same in every process (str hashing is salted per process)
                sample = self.transform(sample, random.Random(hash((self.seed, self.epoch, index, 1))))
        except (ValueError, OSError, KeyError, TypeError) as err:
            return Skipped(f"sample {index}: {err}")
        return sample


def _batch_seed(keys: list[object]) -> int:
    """A seed from the samples' keys, the same in every process (Python's str hash is salted)."""
    return int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:8], "little") & (2**63 - 1)
