"""Phrase grounding (Flickr30k Entities) and referring expressions (RefCOCO / RefCOCO+ / RefCOCOg).

Flickr30k Entities is scored as in MDETR's Flickr30k Entities evaluation: Recall@k (k = 1, 5, 10)
over every phrase that has at least one ground-truth box. A phrase is found at k when one of its k
highest-scoring predicted boxes has IoU >= 0.5 with

* **any-box**: any one of the phrase's ground-truth boxes (MDETR's default, "separate" boxes), or
* **merged-box**: the single box enclosing all of the phrase's ground-truth boxes (MDETR's
  "merged" protocol, the one of the original Flickr30k Entities paper).

Both are computed in one pass. The annotations are an MDETR-style json (`final_flickr_separateGT_*.json`
or `final_flickr_mergedGT_*.json`): one `images` entry per (image, sentence) with `caption` and
`tokens_positive_eval` (per phrase, its [start, end] character spans), `annotations` with `bbox`
[x, y, w, h] and `tokens_positive`. A box belongs to every phrase whose spans its
`tokens_positive` overlap. The prompt is the caption with phrase k as label k, so a prediction's
`category_id` is its phrase index + 1 and its `image_id` the sentence entry's id.

Referring expressions are scored as in MDETR's RefExp evaluation: Precision@k at IoU >= 0.5 over
expressions, ranking all predictions of an expression by score whatever their label; P@1 is the
usual "accuracy@0.5". Annotations are either an MDETR-style json (`final_refcoco_val.json`: one
`images` entry per expression with its `caption`, one annotation with the target box) or the refer
toolkit's files (`refs(unc).p` / `refs(umd).p` / `refs(google).p` beside `instances.json`), where
one split is chosen and every sentence becomes an expression filed under its `sent_id`.

Boxes are compared in plain COCO geometry (x2 = x + w) for both predictions and ground truth, so
predictions are written without the legacy +1 box size of the COCO box-AP evaluation.
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_iou

from ..inference.detections import Detections
from ..processing.prompts import Span
from ..utils.boxes import xywh_to_xyxy
from .base import Benchmark, EvalSample, Results, ResultsEvaluator, check_known_ids
from .coco import read_annotations

RANKS = (1, 5, 10)  # the k of Recall@k / Precision@k, as reported by MDETR and GLIP
IOU_THRESHOLD = 0.5
REFER_SUFFIXES = (".p", ".pkl", ".pickle")

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in original image pixels


@dataclass(frozen=True)
class FlickrEntry:
    """One (image, sentence) entry of a Flickr30k Entities json.

    spans: per phrase its character spans in `caption` (phrase k -> prompt label k);
    boxes: per phrase its ground-truth boxes, xyxy in original image pixels (empty when the phrase
    has no box: it is prompted but not scored)."""

    image_id: int
    file_name: str
    caption: str
    spans: tuple[tuple[Span, ...], ...]
    boxes: tuple[tuple[Box, ...], ...]


@dataclass(frozen=True)
class RefExpEntry:
    """One referring expression: the whole `caption` (or its `spans`) is the single prompt phrase;
    boxes: the target's ground-truth box(es), xyxy in original image pixels (one in RefCOCO/+/g)."""

    image_id: int
    file_name: str
    caption: str
    spans: tuple[Span, ...]
    boxes: tuple[Box, ...]


# --- shared helpers -------------------------------------------------------------------------------
def _int_id(value: Any, what: str, ann_file: str | Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{ann_file}: {what} must be an integer id, got {value!r:.80}")
    return int(value)


def _xywh_to_xyxy(bbox: Any, what: str, ann_file: str | Path) -> Box:
    """COCO [x, y, w, h] -> plain (x1, y1, x1 + w, y1 + h), with a one-line error for a bad box."""
    if not (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    ):
        raise ValueError(f"{ann_file}: {what} has no [x, y, width, height] bbox (got {bbox!r:.80})")
    x1, y1, x2, y2 = xywh_to_xyxy(torch.tensor([float(v) for v in bbox], dtype=torch.float64)).tolist()
    return (x1, y1, x2, y2)


def _spans(value: Any, caption: str, what: str, ann_file: str | Path) -> tuple[Span, ...]:
    """A list of [start, end] spans (or one bare [start, end]) checked against the caption."""
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        value = [value]
    try:
        spans = tuple((int(s), int(e)) for s, e in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{ann_file}: {what} must be a list of [start, end] spans, got {value!r:.80}"
        ) from None
    for s, e in spans:
        if not 0 <= s < e <= len(caption):
            raise ValueError(
                f"{ann_file}: {what} span ({s}, {e}) lies outside its caption (length {len(caption)})"
            )
    return spans


def _overlaps(a: Sequence[Span], b: Sequence[Span]) -> bool:
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


def _entry_fields(info: Any, index: int, ann_file: str | Path) -> tuple[int, str, str]:
    """id, file_name and caption of an `images` entry, or a one-line error naming what is missing."""
    if not isinstance(info, dict):
        raise ValueError(f"{ann_file}: images entry {index} is not an object")  # file content
    missing = [key for key in ("id", "file_name", "caption") if key not in info]
    if missing:
        raise ValueError(f"{ann_file}: images entry {index} lacks {', '.join(missing)}")
    if not isinstance(info["caption"], str) or not info["caption"].strip():
        raise ValueError(f"{ann_file}: images entry {index} has an empty caption")
    return _int_id(info["id"], f"images entry {index} id", ann_file), str(info["file_name"]), info["caption"]


def _annotations_by_entry(data: dict[str, Any], ids: set[int], ann_file: str | Path) -> dict[int, list[dict]]:
    """The annotations grouped by the entry they belong to; annotations of entries that the json
    does not list mean the file is inconsistent, which is reported rather than silently dropped."""
    grouped: dict[int, list[dict]] = defaultdict(list)
    stray: list[Any] = []
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise ValueError(f"{ann_file}: annotation {i} lacks image_id")
        image_id = _int_id(ann["image_id"], f"annotation {i} image_id", ann_file)
        if image_id not in ids:
            stray.append(image_id)
        grouped[image_id].append(ann)
    if stray:
        shown = sorted(set(stray))[:5]
        raise ValueError(
            f"{ann_file}: {len(stray)} annotations refer to image ids not in images (e.g. {shown})"
        )
    return grouped


def _check_unique(ids: Iterable[int], what: str, ann_file: str | Path) -> None:
    seen: set[int] = set()
    repeated: set[int] = set()
    for i in ids:
        (repeated if i in seen else seen).add(i)
    duplicates = sorted(repeated)
    if duplicates:
        raise ValueError(f"{ann_file}: duplicate {what} {duplicates[:5]}")


def _ranked_boxes(entries: list[tuple[float, list[float]]], depth: int) -> torch.Tensor:
    """The `depth` highest-scoring predicted boxes as a (min(depth, P), 4) xyxy tensor; a stable
    sort keeps the file order among equal scores. Negative sizes are clamped to an empty box."""
    ranked = sorted(entries, key=lambda e: -e[0])[:depth]
    xywh = torch.tensor([bbox for _, bbox in ranked], dtype=torch.float64).reshape(-1, 4)
    xywh[:, 2:] = xywh[:, 2:].clamp(min=0.0)
    return xywh_to_xyxy(xywh)


def first_hit(
    ranked: torch.Tensor, targets: torch.Tensor, iou_threshold: float = IOU_THRESHOLD
) -> int | None:
    """Rank (0-based) of the first of `ranked` (P, 4) xyxy boxes with IoU >= `iou_threshold` with any
    of `targets` (G, 4) xyxy; None when none does. Found at k  <=>  first_hit < k."""
    if ranked.shape[0] == 0 or targets.shape[0] == 0:
        return None
    hits = (box_iou(ranked, targets) >= iou_threshold).any(dim=1).nonzero()
    return int(hits[0, 0]) if hits.numel() else None


def _rates(first_hits: list[int | None], prefix: str) -> dict[str, float]:
    """Fraction of items found within each k of RANKS (0.0 when there are no items)."""
    n = len(first_hits)
    return {
        f"{prefix}@{k}": (sum(1 for h in first_hits if h is not None and h < k) / n if n else 0.0)
        for k in RANKS
    }


# --- Flickr30k Entities ---------------------------------------------------------------------------
def load_flickr(ann_file: str | Path) -> list[FlickrEntry]:
    """The entries of an MDETR-style Flickr30k Entities json (see the module docstring). Phrases
    come from `tokens_positive_eval`; without it, from the distinct `tokens_positive` of the entry's
    annotations, in caption order."""
    data = read_annotations(ann_file, ("images", "annotations"))
    fields = [_entry_fields(info, i, ann_file) for i, info in enumerate(data["images"])]
    _check_unique((f[0] for f in fields), "images ids", ann_file)
    anns_of = _annotations_by_entry(data, {f[0] for f in fields}, ann_file)
    entries = []
    for info, (image_id, file_name, caption) in zip(data["images"], fields, strict=True):
        boxes: list[tuple[tuple[Span, ...], Box]] = []
        for ann in anns_of.get(image_id, []):
            what = f"annotation {ann.get('id', '?')} (entry {image_id})"
            if "tokens_positive" not in ann:
                raise ValueError(f"{ann_file}: {what} lacks tokens_positive")
            boxes.append(
                (
                    _spans(ann["tokens_positive"], caption, what, ann_file),
                    _xywh_to_xyxy(ann.get("bbox"), what, ann_file),
                )
            )
        if "tokens_positive_eval" in info:
            phrases = info["tokens_positive_eval"]
            if not isinstance(phrases, list):
                raise ValueError(
                    f"{ann_file}: entry {image_id} tokens_positive_eval must be a list of phrases"
                )
            spans = tuple(
                _spans(p, caption, f"entry {image_id} phrase {k}", ann_file) for k, p in enumerate(phrases)
            )
            empty = [k for k, s in enumerate(spans) if not s]
            if empty:
                raise ValueError(f"{ann_file}: entry {image_id} phrases {empty} have no spans")
        else:
            distinct = {tuple(sorted(set(s))) for s, _ in boxes if s}
            spans = tuple(sorted(distinct))
        per_phrase = tuple(
            tuple(box for box_spans, box in boxes if _overlaps(box_spans, phrase)) for phrase in spans
        )
        entries.append(FlickrEntry(image_id, file_name, caption, spans, per_phrase))
    return entries


class _EntriesEvaluator(ResultsEvaluator):
    """Grounding evaluators: one prompt per annotation entry (filed under its id), predictions
    written with the plain COCO box size, image ids checked against the entries."""

    def __init__(self, entries: Sequence[FlickrEntry] | Sequence[RefExpEntry], distributed: bool) -> None:
        self.entries = {e.image_id: e for e in entries}
        super().__init__(distributed)

    def to_results(self, sample: EvalSample, detections: Detections) -> Results:
        # label k is phrase k -> category k + 1 (the to_coco default)
        return detections.to_coco(sample.image_id, legacy_box_size=False)

    def known_image_ids(self) -> list[int]:
        return sorted(self.entries)

    def validate_results(self, results: Results) -> None:
        super().validate_results(results)
        check_known_ids(results, self.entries)  # labels: checked per entry by the subclass


class FlickrEvaluator(_EntriesEvaluator):
    """Recall@1/5/10 of phrase grounding, any-box and merged-box protocols at once.

    `evaluate()` -> {"flickr": {"any_box": {"R@1", "R@5", "R@10"}, "merged_box": {"R@1", "R@5",
    "R@10"}, "phrases": N}}: fractions in [0, 1] over the N phrases (with at least one
    ground-truth box) of the evaluated entries; all 0.0 when there is nothing to score."""

    def __init__(self, ann_file: str | Path | Sequence[FlickrEntry], distributed: bool = True) -> None:
        super().__init__(
            list(ann_file) if isinstance(ann_file, (list, tuple)) else load_flickr(ann_file), distributed
        )

    def validate_results(self, results: Results) -> None:
        super().validate_results(results)
        bad = sorted(
            {
                (r["image_id"], r["category_id"])
                for r in results
                if not _is_label_id(r["category_id"], len(self.entries[r["image_id"]].spans))
            },
            key=str,
        )
        if bad:
            raise ValueError(
                f"predictions with category ids that are not a phrase index + 1 of their entry "
                f"(image_id, category_id): {bad[:5]}"
            )

    def score(self, results: Results, image_ids: list[int]) -> dict[str, Any]:
        predicted: dict[tuple[int, int], list[tuple[float, list[float]]]] = defaultdict(list)
        for r in results:
            predicted[(r["image_id"], r["category_id"])].append((float(r["score"]), r["bbox"]))
        any_box: list[int | None] = []
        merged_box: list[int | None] = []
        for image_id in image_ids:
            entry = self.entries.get(image_id)
            if entry is None:  # not an entry of this json: nothing to score
                continue
            for k, gt in enumerate(entry.boxes):
                if not gt:  # phrases without a box (e.g. scene, non-visual) are not scored
                    continue
                targets = torch.tensor(gt, dtype=torch.float64)
                merged = torch.cat([targets[:, :2].min(dim=0).values, targets[:, 2:].max(dim=0).values])[None]
                ranked = _ranked_boxes(predicted.get((image_id, k + 1), []), max(RANKS))
                any_box.append(first_hit(ranked, targets))
                merged_box.append(first_hit(ranked, merged))
        return {
            "flickr": {
                "any_box": _rates(any_box, "R"),
                "merged_box": _rates(merged_box, "R"),
                "phrases": len(any_box),
            }
        }


def _is_label_id(category_id: Any, num_labels: int) -> bool:
    return (
        isinstance(category_id, int) and not isinstance(category_id, bool) and 1 <= category_id <= num_labels
    )


def flickr_benchmark(ann_file: str | Path, image_dir: str | Path, distributed: bool = True) -> Benchmark:
    """Every (image, sentence) entry of an MDETR-style Flickr30k Entities json, prompted with its
    caption and phrases. Entries without a phrase are left out of the run (nothing to prompt or
    score)."""
    entries = load_flickr(ann_file)
    samples = [
        EvalSample(Path(image_dir) / e.file_name, e.image_id, caption=e.caption, spans=e.spans)
        for e in entries
        if e.spans
    ]
    return Benchmark("flickr", samples, FlickrEvaluator(entries, distributed=distributed))


# --- referring expressions ------------------------------------------------------------------------
class _RefusingUnpickler(pickle.Unpickler):
    """Refuses every global: refer's refs are plain lists, dicts, strings and numbers, which
    unpickle without one, while anything that could run code needs one (GLOBAL/STACK_GLOBAL/EXT)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")


def _load_refs(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open("rb") as f:
            refs = _RefusingUnpickler(f, encoding="latin1").load()  # refer's pickles come from Python 2
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such refs file") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure is "not a refs file"
        raise ValueError(f"{path}: not a refer refs pickle ({err})") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ValueError(f"{path}: not a refer refs pickle (expected a list of refs)")
    return refs


def load_refexp(ann_file: str | Path, split: str | None = None) -> list[RefExpEntry]:
    """Referring expressions of an MDETR-style json, or of a refer refs pickle (with
    `instances.json` beside it) restricted to `split` (required for the pickle)."""
    path = Path(ann_file)
    if path.suffix.lower() in REFER_SUFFIXES:
        return _load_refer(path, split)
    if split is not None:
        raise ValueError(
            f"{ann_file}: split {split!r} applies to refer refs pickles only; an MDETR-style "
            f"json holds one split already"
        )
    return _load_mdetr_refexp(path)


def _load_mdetr_refexp(ann_file: Path) -> list[RefExpEntry]:
    data = read_annotations(ann_file, ("images", "annotations"))
    fields = [_entry_fields(info, i, ann_file) for i, info in enumerate(data["images"])]
    _check_unique((f[0] for f in fields), "images ids", ann_file)
    anns_of = _annotations_by_entry(data, {f[0] for f in fields}, ann_file)
    without = [f[0] for f in fields if not anns_of.get(f[0])]
    if without:
        raise ValueError(
            f"{ann_file}: {len(without)} expressions have no ground-truth box (e.g. {without[:5]})"
        )
    entries = []
    for image_id, file_name, caption in fields:
        anns = anns_of[image_id]
        boxes = tuple(
            _xywh_to_xyxy(a.get("bbox"), f"annotation {a.get('id', '?')} (entry {image_id})", ann_file)
            for a in anns
        )
        spans = (
            _spans(anns[0]["tokens_positive"], caption, f"entry {image_id} tokens_positive", ann_file)
            if anns[0].get("tokens_positive")
            else _whole(caption)
        )
        entries.append(RefExpEntry(image_id, file_name, caption, spans, boxes))
    return entries


def _whole(caption: str) -> tuple[Span, ...]:
    """The caption without surrounding blanks as one span (the prompt's phrase must be non-blank)."""
    start = len(caption) - len(caption.lstrip())
    return ((start, len(caption.rstrip())),)


def _load_refer(path: Path, split: str | None) -> list[RefExpEntry]:
    refs = _load_refs(path)
    splits = sorted({str(r.get("split")) for r in refs})
    if split is None:
        raise ValueError(f"{path}: a refer refs file needs a split (present: {', '.join(splits)})")
    chosen = [r for r in refs if r.get("split") == split]
    if not chosen:
        raise ValueError(f"{path}: no refs in split {split!r} (present: {', '.join(splits)})")
    instances_file = path.parent / "instances.json"
    instances = read_annotations(instances_file, ("images", "annotations"))
    try:
        images = {int(i["id"]): i for i in instances["images"]}
        boxes = {int(a["id"]): a for a in instances["annotations"]}
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{instances_file}: images and annotations need ids ({err})") from None
    entries = []
    for ref in chosen:
        missing = [key for key in ("ref_id", "ann_id", "image_id", "sentences") if key not in ref]
        if missing:
            raise ValueError(f"{path}: ref {ref.get('ref_id', '?')} lacks {', '.join(missing)}")
        ann, image = boxes.get(ref["ann_id"]), images.get(ref["image_id"])
        if ann is None or image is None:
            raise ValueError(
                f"{path}: ref {ref['ref_id']} names annotation {ref['ann_id']} / image "
                f"{ref['image_id']}, not in {instances_file.name}"
            )
        if "file_name" not in image:
            raise ValueError(f"{instances_file}: image {ref['image_id']} lacks file_name")
        box = _xywh_to_xyxy(ann.get("bbox"), f"annotation {ref['ann_id']}", instances_file)
        if not isinstance(ref["sentences"], list):
            raise ValueError(f"{path}: ref {ref['ref_id']} sentences must be a list")  # file content
        for sentence in ref["sentences"]:
            if not isinstance(sentence, dict) or "sent_id" not in sentence or "sent" not in sentence:
                raise ValueError(f"{path}: ref {ref['ref_id']} has a sentence without sent / sent_id")
            caption = str(sentence["sent"])
            if not caption.strip():
                raise ValueError(f"{path}: sentence {sentence['sent_id']} is empty")
            entries.append(
                RefExpEntry(
                    _int_id(sentence["sent_id"], "sent_id", path),
                    str(image["file_name"]),
                    caption,
                    _whole(caption),
                    (box,),
                )
            )
    _check_unique((e.image_id for e in entries), "sent_ids", path)
    return entries


class RefExpEvaluator(_EntriesEvaluator):
    """Top-k accuracy at IoU >= 0.5 of referring expressions.

    `evaluate()` -> {"refexp": {"P@1", "P@5", "P@10", "expressions": N}}: fractions in [0, 1] of
    the N evaluated expressions whose k best-scoring predictions (any label) hold a box with
    IoU >= 0.5 with the target; all 0.0 when there is nothing to score."""

    def __init__(
        self, ann_file: str | Path | Sequence[RefExpEntry], split: str | None = None, distributed: bool = True
    ) -> None:
        super().__init__(
            list(ann_file) if isinstance(ann_file, (list, tuple)) else load_refexp(ann_file, split),
            distributed,
        )

    def validate_results(self, results: Results) -> None:
        super().validate_results(results)
        # the prompt has one phrase, so its label 0 is category 1
        bad = sorted({r["category_id"] for r in results if not _is_label_id(r["category_id"], 1)}, key=str)
        if bad:
            raise ValueError(f"predictions with category ids other than 1 (the expression): {bad[:5]}")

    def score(self, results: Results, image_ids: list[int]) -> dict[str, Any]:
        predicted: dict[int, list[tuple[float, list[float]]]] = defaultdict(list)
        for r in results:
            predicted[r["image_id"]].append((float(r["score"]), r["bbox"]))
        hits = []
        for image_id in image_ids:
            entry = self.entries.get(image_id)
            if entry is None:
                continue
            ranked = _ranked_boxes(predicted.get(image_id, []), max(RANKS))
            hits.append(first_hit(ranked, torch.tensor(entry.boxes, dtype=torch.float64)))
        return {"refexp": {**_rates(hits, "P"), "expressions": len(hits)}}


def refexp_benchmark(
    ann_file: str | Path, image_dir: str | Path, split: str | None = None, distributed: bool = True
) -> Benchmark:
    """Every referring expression of an MDETR-style json or of one split of a refer refs pickle,
    prompted with the expression as its one phrase."""
    entries = load_refexp(ann_file, split)
    samples = [
        EvalSample(Path(image_dir) / e.file_name, e.image_id, caption=e.caption, spans=(e.spans,))
        for e in entries
    ]
    return Benchmark("refcoco", samples, RefExpEvaluator(entries, distributed=distributed))
