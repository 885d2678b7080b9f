"""COCO box AP with pycocotools (the reference implementation the papers' numbers come from).

`COCOEvaluator` collects `Detections` per image, converts them to COCO results (with the
official +1 box size), gathers them to rank 0 under DDP and runs `COCOeval`.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
from tqdm import tqdm

from ..inference.detections import Detections

# COCOeval.stats order
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


class COCOEvaluator:
    """Box AP of detections against a COCO instances json.

    `process(image_ids, detections)`: one `Detections` per image id, labels indexing
    `category_ids` (the category id of each label). With `distributed`, `evaluate()` is a
    collective: every rank calls it and rank 0 gets the metrics of all ranks' images."""

    def __init__(self, ann_file: str | Path, category_ids: Sequence[int], distributed: bool = True) -> None:
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
            self.coco = COCO(str(ann_file))
        self.category_ids = list(category_ids)
        # False when only one process evaluates (e.g. rank 0 during training): no collective then
        self.distributed = distributed
        unknown = sorted(set(self.category_ids) - set(self.coco.getCatIds()))
        if unknown:
            raise ValueError(f"{ann_file}: unknown category ids {unknown}")
        self.reset()

    def reset(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.image_ids: list[int] = []

    def process(self, image_ids: Sequence[int], outputs: Sequence[Detections]) -> None:
        for image_id, detections in zip(image_ids, outputs):
            self.image_ids.append(int(image_id))
            self.results.extend(detections.to_coco(int(image_id), self.category_ids))

    def evaluate(self) -> dict[str, dict[str, float | None]]:
        """{"bbox": {"AP", "AP50", ..., "AR100"}} as fractions (None where the ground truth has no
        object of that kind); empty on ranks other than 0."""
        results, image_ids = self.results, self.image_ids
        if self.distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (results, image_ids))
            if dist.get_rank() != 0:
                return {}
            results = [r for part, _ in gathered for r in part]
            image_ids = [i for _, part in gathered for i in part]
        if not results:
            return {"bbox": dict.fromkeys(STAT_NAMES, 0.0)}
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            predictions = self.coco.loadRes(results)
            coco_eval = COCOeval(self.coco, predictions, "bbox")
            coco_eval.params.imgIds = sorted(set(image_ids))
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        # pycocotools writes -1 where a figure has no ground truth (e.g. APl without large objects)
        return {"bbox": {name: (float(v) if v >= 0 else None) for name, v in zip(STAT_NAMES, coco_eval.stats)}}


def evaluate_detection(predictor: Any, ann_file: str | Path, image_dir: str | Path, limit: int | None = None,
                       progress: bool = True) -> dict[str, dict[str, float | None]]:
    """Run `predictor.detect` on the images of a COCO json with its categories as the class prompt
    (names cleaned as official) and score the detections (threshold 0: all the post-processing
    keeps). Runs in this process alone (no collective)."""
    from ..data.grounding import clean_category_name

    data = json.loads(Path(ann_file).read_text())
    categories = sorted(data["categories"], key=lambda c: c["id"])
    names = [clean_category_name(c["name"]) for c in categories]
    evaluator = COCOEvaluator(ann_file, [c["id"] for c in categories], distributed=False)
    images = data["images"][:limit] if limit else data["images"]
    for info in tqdm(images, desc="evaluate", unit="image", disable=not progress, leave=False):
        detections = predictor.detect(Path(image_dir) / info["file_name"], names, threshold=0.0)
        evaluator.process([info["id"]], [detections])
    return evaluator.evaluate()
