"""Training augmentations on `GroundingSample`s that keep image, boxes and text consistent.

* multi-scale resize (shorter side drawn from a list, longer side capped), boxes scaled;
* horizontal flip that also swaps "left" and "right" in the caption, moving every phrase span;
* colour augmentation that never changes a named colour: brightness and contrast only (a hue or
  saturation shift could turn the "red circle" of the caption orange).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import replace

import torch
from PIL import Image, ImageEnhance

from ..processing.processor import official_resize_size
from ..processing.prompts import Span
from .grounding import GroundingSample, label_id

_LEFT_RIGHT = re.compile(r"\b(left|right|leftmost|rightmost)\b", re.IGNORECASE)
_SWAP = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}


def swap_left_right(text: str, spans: dict[int, tuple[Span, ...]]) -> tuple[str, dict[int, tuple[Span, ...]]]:
    """Swap the words left/right (and leftmost/rightmost) keeping their case, and move every span
    so that it covers the same words in the new text."""
    pieces, shifts = [], []  # shifts: (position in old text after which, cumulative length change)
    cursor, delta = 0, 0
    for m in _LEFT_RIGHT.finditer(text):
        word = m.group(0)
        new = _SWAP[word.lower()]
        new = new.capitalize() if word[0].isupper() else new
        pieces.append(text[cursor : m.start()])
        pieces.append(new)
        cursor = m.end()
        delta += len(new) - len(word)
        shifts.append((m.end(), delta))
    pieces.append(text[cursor:])

    def move(position: int) -> int:
        # every replaced word that ends at or before `position` shifts it (a span end there covers
        # the word, a span start there begins after it)
        change = 0
        for end, d in shifts:
            if end <= position:
                change = d
        return position + change

    moved = {k: tuple((move(s), move(e)) for s, e in v) for k, v in spans.items()}
    return "".join(pieces), moved


class RandomResize:
    """Shorter side drawn from `min_sizes`, longer side at most `max_size` (official rounding)."""

    def __init__(self, min_sizes: Sequence[int], max_size: int) -> None:
        self.min_sizes = list(min_sizes)
        self.max_size = max_size

    def __call__(self, sample: GroundingSample, rng: random.Random) -> GroundingSample:
        width, height = sample.image.size
        h, w = official_resize_size(width, height, rng.choice(self.min_sizes), self.max_size)
        if (h, w) == (height, width):
            return sample
        image = sample.image.resize((w, h), Image.BILINEAR)
        scale = torch.tensor([w / width, h / height, w / width, h / height])
        masks = sample.masks
        if masks is not None:
            masks = torch.nn.functional.interpolate(masks[None].float(), size=(h, w), mode="nearest")[0] > 0.5
        return replace(sample, image=image, boxes=sample.boxes * scale, masks=masks)


class RandomHorizontalFlip:
    """Mirror the image, boxes and masks; "left" and "right" trade places in the caption."""

    def __init__(self, probability: float = 0.5) -> None:
        self.probability = probability

    def __call__(self, sample: GroundingSample, rng: random.Random) -> GroundingSample:
        if rng.random() >= self.probability:
            return sample
        width = sample.image.size[0]
        boxes = sample.boxes.clone()
        # legacy +1 convention (official BoxList.transpose): x1' = W - x2 - 1
        boxes[:, 0], boxes[:, 2] = width - sample.boxes[:, 2] - 1, width - sample.boxes[:, 0] - 1
        masks = None if sample.masks is None else sample.masks.flip(-1)
        caption, phrases = swap_left_right(sample.caption, sample.phrases)
        if caption == sample.caption:
            return replace(
                sample, image=sample.image.transpose(Image.FLIP_LEFT_RIGHT), boxes=boxes, masks=masks
            )
        box_spans = None
        if sample.box_spans is not None:
            _, moved = swap_left_right(sample.caption, dict(enumerate(sample.box_spans)))
            box_spans = [moved[j] for j in range(len(sample.box_spans))]
        # a phrase whose words changed ("the left dog" -> "the right dog") is another concept now: its
        # identity (used by L_inter across images) follows its new text, computed as the datasets do
        # (the text of one mention: a box's own spans, or the phrase's spans for class prompts)
        relabel = {}
        labels = sample.box_labels.tolist()
        for label, spans in phrases.items():
            if [caption[s:e] for s, e in spans] == [sample.caption[s:e] for s, e in sample.phrases[label]]:
                continue
            mention = box_spans[labels.index(label)] if box_spans is not None and label in labels else spans
            relabel[label] = label_id(" ".join(caption[s:e] for s, e in mention))
        return replace(
            sample,
            image=sample.image.transpose(Image.FLIP_LEFT_RIGHT),
            boxes=boxes,
            caption=caption,
            phrases={relabel.get(k, k): v for k, v in phrases.items()},
            box_labels=torch.tensor(
                [relabel.get(int(v), int(v)) for v in sample.box_labels.tolist()], dtype=torch.long
            ),
            box_spans=box_spans,
            masks=masks,
        )


class ColourJitter:
    """Brightness and contrast factors drawn from [1 - strength, 1 + strength]; hue and saturation
    are left alone so that every named colour stays what the caption says."""

    def __init__(self, strength: float = 0.2, probability: float = 0.8) -> None:
        self.strength = strength
        self.probability = probability

    def __call__(self, sample: GroundingSample, rng: random.Random) -> GroundingSample:
        if rng.random() >= self.probability:
            return sample
        image = ImageEnhance.Brightness(sample.image).enhance(1 + rng.uniform(-self.strength, self.strength))
        image = ImageEnhance.Contrast(image).enhance(1 + rng.uniform(-self.strength, self.strength))
        return replace(sample, image=image)


class Compose:
    def __init__(self, transforms: Sequence[object]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: GroundingSample, rng: random.Random) -> GroundingSample:
        for t in self.transforms:
            sample = t(sample, rng)  # type: ignore[operator]
        return sample


def build_train_transforms(
    min_sizes: Sequence[int] = (480, 560, 640, 720, 800),
    max_size: int = 1333,
    flip_probability: float = 0.5,
    colour_strength: float = 0.2,
) -> Compose:
    return Compose(
        [
            RandomResize(min_sizes, max_size),
            RandomHorizontalFlip(flip_probability),
            ColourJitter(colour_strength),
        ]
    )
