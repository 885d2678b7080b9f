"""Training samples as grounding data: an image, a caption, boxes, and which caption spans name them.

Two sources, as in the official training: COCO-style detection json (each image becomes a class
prompt — its positive categories plus sampled negatives, shuffled, joined with ". ", official
`od_to_grounding`) and MDETR-style grounding json (`caption`, `tokens_positive` per box).

Every labelled phrase carries an identity (`label_id`) shared across images and datasets — a hash
of its normalised text — so that L_inter can treat "red circle" in one image and "red circle" in
another as the same concept, and "blue square" of another image as a negative.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..processing.processor import load_image
from ..processing.prompts import DETECTION_SEPARATOR, Span
from ..utils.boxes import clip_to_image, xywh_to_xyxy
from ..utils.io import read_json

# Official od_to_grounding: up to 85 categories per prompt (positives first, then negatives).
MAX_PROMPT_CATEGORIES = 85


def clean_category_name(name: str) -> str:
    """Official evaluation/training cleaning: drop "(...)", "_" -> " ", collapse spaces."""
    return " ".join(re.sub(r"\(.*?\)", "", name).replace("_", " ").split())


def label_id(text: str) -> int:
    """A stable 63-bit identity of a phrase's normalised text, equal on every process (L_inter
    gathers labels across DDP ranks, so a per-process vocabulary would not do)."""
    normalised = " ".join(text.lower().split())
    return int.from_bytes(hashlib.blake2b(normalised.encode(), digest_size=8).digest(), "big") >> 1


@dataclass
class GroundingSample:
    """image: RGB; caption: the prompt text; boxes: (N, 4) xyxy in image pixels; box_labels: (N,)
    identity of the phrase naming each box; phrases: identity -> its character spans in the caption,
    for every labelled phrase (negatives included); box_spans: optionally, per box, the spans of its
    own mention (grounding data: two "a dog"s are the same phrase identity but different boxes'
    targets); without them a box's target is every span of its phrase (class prompts); masks:
    optionally (N, H, W) bool, each box's instance mask in image pixels (for the mask head)."""

    image: Image.Image
    caption: str
    boxes: torch.Tensor
    box_labels: torch.Tensor
    phrases: dict[int, tuple[Span, ...]]
    image_id: int | str = 0
    meta: dict[str, Any] = field(default_factory=dict)
    box_spans: list[tuple[Span, ...]] | None = None
    masks: torch.Tensor | None = None

    def spans_of_box(self, index: int) -> tuple[Span, ...]:
        if self.box_spans is not None:
            return self.box_spans[index]
        return self.phrases[int(self.box_labels[index])]


@dataclass
class SkipCounter:
    """Why samples or boxes were dropped, for the training log."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)


def legacy_boxes(xywh: list[list[float]]) -> torch.Tensor:
    """COCO [x, y, w, h] rows -> (N, 4) float32 xyxy in the legacy +1 convention of the official
    code (x2 = x + w - 1), computed in float64 like the json's numbers, then rounded once."""
    return xywh_to_xyxy(torch.tensor(xywh, dtype=torch.float64).reshape(-1, 4), legacy=True).float()


def sanitize_boxes(boxes: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 4) legacy xyxy boxes -> (boxes clipped to [0, W-1] x [0, H-1], keep mask), as the official
    `clip_to_image(remove_empty=True)`: kept are finite boxes with x2 > x1 and y2 > y1 after
    clipping (so boxes outside the image and boxes without area are dropped)."""
    clipped = clip_to_image(boxes, (height, width))
    keep = (
        torch.isfinite(boxes).all(dim=1) & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    )
    return clipped, keep


class DataError(ValueError):
    """A sample that cannot be used (missing field, unreadable image); skipped and counted."""


def _check_entry(file_name: Any, image_id: Any, index: int) -> None:
    if not isinstance(file_name, str) or not file_name:
        raise DataError(f"image entry {index}: file_name must be a non-empty string, got {file_name!r}")
    if not _is_id(image_id):
        raise DataError(f"image entry {index}: id must be an integer or a string, got {image_id!r}")


def load_annotated_image(path: Path, info: dict[str, Any]) -> Image.Image:
    """The image of a json entry, in the pixel frame its boxes refer to.

    A phone photo is often stored sideways with an EXIF orientation tag saying how to turn it
    upright. Annotation tools show it upright (the displayed frame: labelme, Label Studio, CVAT, a
    browser) and COCO exporters record that frame's `width`/`height`, so boxes are read in the
    displayed frame, as `predict` sees the image. Some exporters ignored the tag; when the entry's
    width/height match only the stored frame (a 90-degree tag swaps them), the json itself says
    the annotator saw the stored pixels, so those are used and the boxes still land on what they
    name. A 180-degree turn or a mirror keeps the size, so nothing tells the frames apart there:
    the displayed frame is used."""
    image = load_image(path)
    width, height = info.get("width"), info.get("height")
    if (
        isinstance(width, int)
        and isinstance(height, int)
        and (width, height) != image.size
        and (height, width) == image.size
    ):
        stored = load_image(path, exif_orientation=False)
        if stored.size == (width, height):
            return stored
    return image


def decode_segmentation(segmentation: Any, width: int, height: int) -> torch.Tensor:
    """A COCO `segmentation` — polygons, compressed RLE or uncompressed RLE — as an (H, W) bool mask.
    Raises `ValueError` for anything else or for an RLE of another image size."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(segmentation, list):
            polygons = [[float(v) for v in poly] for poly in segmentation]
            if not polygons or any(len(poly) < 6 or len(poly) % 2 for poly in polygons):
                raise ValueError("a polygon needs at least 3 (x, y) points")
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
            if [int(v) for v in segmentation["size"]] != [height, width]:
                raise ValueError(f"RLE of size {segmentation['size']} for an image of {height}x{width}")
            counts = segmentation["counts"]
            rle = (
                mask_utils.frPyObjects(segmentation, height, width)
                if isinstance(counts, list)
                else {
                    "size": [height, width],
                    "counts": counts.encode() if isinstance(counts, str) else counts,
                }
            )
        else:
            raise ValueError(f"not polygons or RLE: {type(segmentation).__name__}")
        return torch.from_numpy(mask_utils.decode(rle).astype(bool))
    except (TypeError, KeyError, IndexError, OverflowError) as err:
        raise ValueError(f"malformed segmentation ({err})") from None


def _read_json(path: str | Path) -> dict[str, Any]:
    """The annotation json, its `images`, `annotations` and `categories` checked to be lists (the
    entries themselves are checked one by one: a bad entry is skipped and counted, not fatal)."""
    data = read_json(path, "annotation")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: not a COCO-style json (no 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise ValueError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data


def _categories(data: dict[str, Any], path: str | Path) -> dict[int, str]:
    """Category id -> cleaned name; a malformed category is an error (it is the vocabulary)."""
    categories: dict[int, str] = {}
    for i, c in enumerate(data.get("categories", [])):
        try:
            if isinstance(c["id"], bool) or not isinstance(c["name"], str):
                raise TypeError("an integer id and a string name")
            categories[int(c["id"])] = clean_category_name(c["name"])
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise ValueError(f"{path}: category {i} needs an integer 'id' and a 'name' ({err})") from None
    return categories


def _annotations_by_image(data: dict[str, Any], skips: SkipCounter) -> dict[Any, list[dict[str, Any]]]:
    """Annotations grouped by `image_id`; entries that are not objects or whose image id is not an
    integer or a string are counted as skipped."""
    grouped: dict[Any, list[dict[str, Any]]] = {}
    for ann in data.get("annotations", []):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not _is_id(image_id):
            skips.add("annotation without an integer or string image_id")
            continue
        grouped.setdefault(image_id, []).append(ann)
    return grouped


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


class CocoGroundingDataset(torch.utils.data.Dataset):
    """COCO instances json as grounding data: per image, a class prompt of its categories plus
    sampled negatives (up to `max_categories` names, order shuffled), boxes pointing at their
    category's span. Boxes are xywh in the json; crowd boxes are ignored. With `with_masks`, each
    box also carries its decoded `segmentation` (a box without a usable one is dropped and counted)."""

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        max_categories: int = MAX_PROMPT_CATEGORIES,
        shuffle_categories: bool = True,
        seed: int = 0,
        skips: SkipCounter | None = None,
        with_masks: bool = False,
    ) -> None:
        data = _read_json(ann_file)
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.categories = _categories(data, ann_file)
        if not self.categories:
            raise ValueError(f"{ann_file}: no categories")
        self.images = list(data["images"])
        self.skips = skips or SkipCounter()
        self.annotations = _annotations_by_image(data, self.skips)
        self.max_categories = max_categories
        self.shuffle_categories = shuffle_categories
        self.seed = seed
        self.epoch = 0
        self.with_masks = with_masks

    def set_epoch(self, epoch: int) -> None:
        """Negatives and order are drawn from (seed, epoch, index): reproducible, new each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> GroundingSample:
        info = self.images[index]
        try:
            file_name, image_id = info["file_name"], info["id"]
        except (KeyError, TypeError) as err:
            raise DataError(f"image entry {index} lacks {err}") from None
        _check_entry(file_name, image_id, index)
        image = load_annotated_image(self.image_dir / file_name, info)
        boxes, cats, dropped, masks = [], [], [], []
        for ann in self.annotations.get(image_id, []):
            if ann.get("iscrowd", 0):
                continue
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
                category = int(ann["category_id"])
            except (KeyError, TypeError, ValueError, OverflowError):
                dropped.append("box without bbox/category_id")
                continue
            if category not in self.categories:
                dropped.append("box with unknown category")
                continue
            if self.with_masks:
                try:
                    masks.append(decode_segmentation(ann["segmentation"], *image.size))
                except (KeyError, ValueError):
                    dropped.append("box without a usable segmentation")
                    continue
            boxes.append([x, y, w, h])
            cats.append(category)
        box_tensor, keep = sanitize_boxes(legacy_boxes(boxes), *image.size)
        if not bool(keep.all()):
            dropped.extend(["box outside the image or without area"] * int((~keep).sum()))
        cats = [c for c, k in zip(cats, keep.tolist()) if k]
        box_tensor = box_tensor[keep]
        mask_tensor = None
        if self.with_masks:
            mask_tensor = (
                torch.stack(masks)
                if masks
                else torch.zeros(0, image.size[1], image.size[0], dtype=torch.bool)
            )[keep]

        rng = random.Random(hash((self.seed, self.epoch, index)))
        positives = sorted(set(cats))
        negatives = [c for c in self.categories if c not in set(positives)]
        rng.shuffle(negatives)
        chosen = positives[: self.max_categories] + negatives[: max(0, self.max_categories - len(positives))]
        if self.shuffle_categories:
            rng.shuffle(chosen)
        caption, spans = _join(self.categories[c] for c in chosen)
        keep_boxes = [i for i, c in enumerate(cats) if c in set(chosen)]
        phrases = {label_id(self.categories[c]): (span,) for c, span in zip(chosen, spans)}
        labels = torch.tensor([label_id(self.categories[cats[i]]) for i in keep_boxes], dtype=torch.long)
        for reason in dropped:
            self.skips.add(reason)
        return GroundingSample(
            image,
            caption,
            box_tensor[keep_boxes],
            labels,
            phrases,
            image_id,
            {"dropped": dropped},
            masks=None if mask_tensor is None else mask_tensor[keep_boxes],
        )


def _join(names: Any) -> tuple[str, list[Span]]:
    text, spans = "", []
    for name in names:
        if text:
            text += DETECTION_SEPARATOR
        spans.append((len(text), len(text) + len(name)))
        text += name
    return text, spans


class MdetrGroundingDataset(torch.utils.data.Dataset):
    """MDETR-style grounding json: `images` with a `caption`, `annotations` with `bbox` (xywh) and
    `tokens_positive` (character spans of the phrase naming the box)."""

    def __init__(self, ann_file: str | Path, image_dir: str | Path, skips: SkipCounter | None = None) -> None:
        data = _read_json(ann_file)
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.images = list(data["images"])
        self.skips = skips or SkipCounter()
        self.annotations = _annotations_by_image(data, self.skips)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> GroundingSample:
        info = self.images[index]
        try:
            file_name, image_id, caption = info["file_name"], info["id"], str(info["caption"])
        except (KeyError, TypeError) as err:
            raise DataError(f"image entry {index} lacks {err}") from None
        _check_entry(file_name, image_id, index)
        image = load_annotated_image(self.image_dir / file_name, info)
        boxes, labels, phrases, dropped, box_spans = [], [], {}, [], []
        for ann in self.annotations.get(image_id, []):
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
                spans = tuple((int(s), int(e)) for s, e in ann["tokens_positive"])
            except (KeyError, TypeError, ValueError, OverflowError):
                dropped.append("box without bbox/tokens_positive")
                continue
            if not spans or any(not 0 <= s < e <= len(caption) for s, e in spans):
                dropped.append("box with a span outside the caption")
                continue
            label = label_id(" ".join(caption[s:e] for s, e in spans))
            phrases[label] = tuple(sorted(set(phrases.get(label, ())) | set(spans)))
            boxes.append([x, y, w, h])
            labels.append(label)
            box_spans.append(spans)
        box_tensor, keep = sanitize_boxes(legacy_boxes(boxes), *image.size)
        if not bool(keep.all()):
            dropped.extend(["box outside the image or without area"] * int((~keep).sum()))
        for reason in dropped:
            self.skips.add(reason)
        label_tensor = torch.tensor(labels, dtype=torch.long)[keep]
        kept_spans = [s for s, k in zip(box_spans, keep.tolist()) if k]
        return GroundingSample(
            image,
            caption,
            box_tensor[keep],
            label_tensor,
            phrases,
            image_id,
            {"dropped": dropped},
            kept_spans,
        )


def build_grounding_dataset(
    ann_file: str | Path, image_dir: str | Path, **kwargs: Any
) -> torch.utils.data.Dataset:
    """A COCO instances json (no `caption` on its images) or an MDETR-style grounding json."""
    data = _read_json(ann_file)
    first = data["images"][0] if data["images"] else {}
    if isinstance(first, dict) and "caption" in first:
        # grounding json carries no masks here: its images add nothing to L_mask
        return MdetrGroundingDataset(ann_file, image_dir, skips=kwargs.get("skips"))
    return CocoGroundingDataset(ann_file, image_dir, **kwargs)


def category_names(datasets: Sequence[torch.utils.data.Dataset]) -> list[str]:
    """All category names of the COCO-style datasets among `datasets`."""
    names: list[str] = []
    for ds in datasets:
        for name in getattr(ds, "categories", {}).values():
            if name not in names:
                names.append(name)
    return names
