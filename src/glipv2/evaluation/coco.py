"""COCO box AP with pycocotools, the reference implementation the papers' numbers come from.

`COCOEvaluator` turns `Detections` into COCO results (with the official +1 box size), gathers
them to rank 0 under DDP and runs `COCOeval`. `coco_benchmark` builds the class-prompt run of
a COCO instances json: categories sorted by id, names cleaned as official.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..inference.detections import Detections
from .base import Benchmark, EvalSample, Results, ResultsEvaluator, run_benchmark

# COCOeval.stats order
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def load_coco(ann_file: str | Path) -> Any:
    """A pycocotools `COCO` of an instances json, with one-line errors for a missing or malformed file."""
    from pycocotools.coco import COCO

    data = read_annotations(ann_file, ("images", "annotations", "categories"))
    check_instances(ann_file, data)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco.createIndex()
    return coco


def read_annotations(ann_file: str | Path, required: Sequence[str]) -> dict[str, Any]:
    try:
        data = json.loads(Path(ann_file).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{ann_file}: no such annotation file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{ann_file}: not a JSON file ({err})") from None
    missing = [key for key in required if not isinstance(data, dict) or key not in data]
    if missing:
        raise ValueError(f"{ann_file}: not a COCO-style annotation file (missing {', '.join(missing)})")
    return data


# the fields the COCO index needs of each entry (a missing one would be a KeyError deep inside it)
_REQUIRED_FIELDS = {"images": ("id",), "annotations": ("id", "image_id", "category_id", "bbox"),
                    "categories": ("id", "name")}


def check_instances(ann_file: str | Path, data: dict[str, Any]) -> None:
    """Raise ValueError naming the first entry of images / annotations / categories that is not
    an object with the fields the COCO index and the evaluation need."""
    for key, fields in _REQUIRED_FIELDS.items():
        entries = data[key]
        if not isinstance(entries, list):
            raise ValueError(f"{ann_file}: {key} must be a list")  # noqa: TRY004 (file content)
        for index, entry in enumerate(entries):
            missing = [f for f in fields if f not in entry] if isinstance(entry, dict) else list(fields)
            if missing:
                raise ValueError(f"{ann_file}: {key} entry {index} lacks {', '.join(missing)}: {entry!r:.100}")


def coco_stats(coco_eval: Any) -> dict[str, float | None]:
    """COCOeval.stats by name; pycocotools' -1 (no ground truth of that kind) becomes None."""
    return {name: (float(v) if v >= 0 else None) for name, v in zip(STAT_NAMES, coco_eval.stats)}


class COCOEvaluator(ResultsEvaluator):
    """Box AP of detections against a COCO instances json.

    category_ids: the category id of each label index of the detections (the class prompt's
    order). `evaluate()` -> {"bbox": {"AP", "AP50", ..., "AR100"}} as fractions, None where the
    ground truth has no object of that kind (e.g. APl without large objects)."""

    def __init__(self, ann_file: str | Path | Any, category_ids: Sequence[int], distributed: bool = True) -> None:
        self.coco = ann_file if hasattr(ann_file, "loadRes") else load_coco(ann_file)
        self.category_ids = [int(c) for c in category_ids]
        unknown = sorted(set(self.category_ids) - set(self.coco.getCatIds()))
        if unknown:
            raise ValueError(f"{ann_file}: unknown category ids {unknown}")
        super().__init__(distributed)

    def to_results(self, sample: EvalSample, detections: Detections) -> Results:
        return detections.to_coco(sample.image_id, self.category_ids)

    def known_image_ids(self) -> list[int]:
        return sorted(self.coco.getImgIds())

    def validate_results(self, results: Results) -> None:
        super().validate_results(results)
        known_images, known_categories = set(self.coco.getImgIds()), set(self.coco.getCatIds())
        images = sorted({r["image_id"] for r in results} - known_images, key=str)
        categories = sorted({r["category_id"] for r in results} - known_categories, key=str)
        if images:
            raise ValueError(f"predictions for {len(images)} image ids not in the annotations: {images[:5]}")
        if categories:
            raise ValueError(f"predictions with category ids not in the annotations: {categories[:10]}")

    def score(self, results: Results, image_ids: list[int]) -> dict[str, Any]:
        if not results or not image_ids:
            return {"bbox": dict.fromkeys(STAT_NAMES, 0.0)}
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval = COCOeval(self.coco, self.coco.loadRes(results), "bbox")
            coco_eval.params.imgIds = image_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return {"bbox": coco_stats(coco_eval)}


def coco_benchmark(ann_file: str | Path, image_dir: str | Path, distributed: bool = True,
                   name: str = "coco") -> Benchmark:
    """Every image of a COCO instances json with all its categories as the class prompt."""
    from ..data.grounding import clean_category_name

    coco = load_coco(ann_file)
    categories = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    if not categories:
        raise ValueError(f"{ann_file}: no categories")
    names = tuple(clean_category_name(str(c["name"])) for c in categories)
    samples = [EvalSample(Path(image_dir) / info["file_name"], int(info["id"]), classes=names)
               for info in coco.dataset["images"]]
    evaluator = COCOEvaluator(coco, [int(c["id"]) for c in categories], distributed=distributed)
    return Benchmark(name, samples, evaluator)


def evaluate_detection(predictor: Any, ann_file: str | Path, image_dir: str | Path, limit: int | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Box AP of `predictor` on (the first `limit` images of) a COCO json, in this process alone
    (no collective: what rank 0 runs during training)."""
    benchmark = coco_benchmark(ann_file, image_dir, distributed=False)
    benchmark.samples = benchmark.samples[:limit] if limit else benchmark.samples
    benchmark.check_images()
    return run_benchmark(predictor, benchmark, progress=progress)
