"""COCO box AP with pycocotools, the reference implementation the papers' numbers come from.

`COCOEvaluator` turns `Detections` into COCO results (with the official +1 box size), gathers
them to rank 0 under DDP and runs `COCOeval`. `coco_benchmark` builds the class-prompt run of
a COCO instances json: categories sorted by id, names cleaned as official.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..inference.detections import Detections
from ..utils.io import read_json
from .base import (
    Benchmark,
    EvalSample,
    Results,
    ResultsEvaluator,
    check_known_ids,
    is_finite,
    is_int,
    run_benchmark,
)

# COCOeval.stats order
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def load_coco(ann_file: str | Path) -> Any:
    """A pycocotools `COCO` of an instances json, with one-line errors for a missing or malformed file."""
    data = read_annotations(ann_file, ("images", "annotations", "categories"))
    check_instances(ann_file, data)
    return coco_index(data)


def coco_index(data: dict[str, Any]) -> Any:
    """A pycocotools `COCO` over an already loaded (and checked) instances dict."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco.createIndex()
    return coco


def read_annotations(ann_file: str | Path, required: Sequence[str]) -> dict[str, Any]:
    data = read_json(ann_file, "annotation")
    missing = [key for key in required if not isinstance(data, dict) or key not in data]
    if missing:
        raise ValueError(f"{ann_file}: not a COCO-style annotation file (missing {', '.join(missing)})")
    not_lists = [key for key in required if not isinstance(data[key], list)]
    if not_lists:
        raise ValueError(f"{ann_file}: {', '.join(not_lists)} must be a list (a COCO-style annotation file)")
    return data


# the fields every entry must have: the ids for the COCO index (a missing one would be a KeyError
# deep inside it), bbox for the box evaluation, name for the class prompt
_REQUIRED_FIELDS = {
    "images": ("id",),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def check_instances(ann_file: str | Path, data: dict[str, Any]) -> None:
    """Raise ValueError naming the first entry of images / annotations / categories that is not
    an object with the fields the COCO index and the evaluation need: integer ids, a bbox of
    four finite numbers, and an image and a category that the file has. Fills in, in place, what
    the evaluation reads but COCO-style files may leave out: `area` (w * h) and `iscrowd` (0)."""
    for key, fields in _REQUIRED_FIELDS.items():
        entries = data[key]
        if not isinstance(entries, list):
            raise ValueError(f"{ann_file}: {key} must be a list")  # file content
        for index, entry in enumerate(entries):
            missing = [f for f in fields if f not in entry] if isinstance(entry, dict) else list(fields)
            if missing:
                raise ValueError(
                    f"{ann_file}: {key} entry {index} lacks {', '.join(missing)}: {entry!r:.100}"
                )
            for id_key in ("id", "image_id", "category_id"):
                if id_key in fields and not is_int(entry[id_key]):
                    raise ValueError(
                        f"{ann_file}: {key} entry {index}: {id_key} must be an integer, "
                        f"got {entry[id_key]!r:.100}"
                    )
    image_ids = {entry["id"] for entry in data["images"]}
    category_ids = {entry["id"] for entry in data["categories"]}
    for index, ann in enumerate(data["annotations"]):
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_finite(v) for v in bbox)):
            raise ValueError(
                f"{ann_file}: annotations entry {index}: bbox must be [x, y, width, height], "
                f"got {bbox!r:.100}"
            )
        if ann["image_id"] not in image_ids:
            raise ValueError(
                f"{ann_file}: annotations entry {index}: image_id {ann['image_id']} is not an image "
                "of the file"
            )
        if ann["category_id"] not in category_ids:
            raise ValueError(
                f"{ann_file}: annotations entry {index}: category_id {ann['category_id']} is not a "
                "category of the file"
            )
        # COCOeval (pycocotools and faster-coco-eval) sorts ground truth into the area ranges
        # (APs / APm / APl) by each box's `area`, and pycocotools reads `iscrowd` when matching:
        # without them it fails with a KeyError mid-evaluation. The defaults are those its
        # `loadRes` gives boxes (area w * h, not a crowd).
        ann.setdefault("area", bbox[2] * bbox[3])
        ann.setdefault("iscrowd", 0)


def coco_stats(coco_eval: Any) -> dict[str, float | None]:
    """COCOeval.stats by name; pycocotools' -1 (no ground truth of that kind) becomes None."""
    return {name: (float(v) if v >= 0 else None) for name, v in zip(STAT_NAMES, coco_eval.stats)}


class COCOEvaluator(ResultsEvaluator):
    """Box AP (and mask AP, for detections with masks) against a COCO instances json.

    category_ids: the category id of each label index of the detections (the class prompt's
    order). `evaluate()` -> {"bbox": {"AP", "AP50", ..., "AR100"}} as fractions, None where the
    ground truth has no object of that kind (e.g. APl without large objects), and "segm" with
    the same figures for masks when the detections carry masks and every annotation has a
    `segmentation`."""

    def __init__(
        self, ann_file: str | Path | Any, category_ids: Sequence[int], distributed: bool = True
    ) -> None:
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
        check_known_ids(results, self.coco.getImgIds(), self.coco.getCatIds())

    def score(self, results: Results, image_ids: list[int]) -> dict[str, Any]:
        """Box AP; mask AP too ("segm") when the detections carry masks and the ground truth has them."""
        if not image_ids:
            return {"bbox": dict.fromkeys(STAT_NAMES, 0.0)}
        scores = {"bbox": self._coco_eval([dict(r) for r in results], image_ids, "bbox")}
        if results and all("segmentation" in r for r in results) and self._has_masks():
            # without the box, loadRes takes area and bbox from the mask, as mask results are scored
            masks = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
            scores["segm"] = self._coco_eval(masks, image_ids, "segm")
        return scores

    def _has_masks(self) -> bool:
        anns = self.coco.dataset.get("annotations", [])
        return bool(anns) and all(a.get("segmentation") for a in anns)

    def _coco_eval(self, results: Results, image_ids: list[int], iou_type: str) -> dict[str, float | None]:
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            # loadRes adds segmentation / area / id / iscrowd to the entries in place, and the
            # entries are what `predictions()` writes out: the caller gives copies. It cannot load an
            # empty list (it looks at the first entry), so no results are scored against an index of
            # the ground truth's images and categories without boxes: figures with ground truth come
            # out 0, those without it -1 (None), as with any other results.
            detections = (
                self.coco.loadRes(results)
                if results
                else coco_index(
                    {
                        "images": self.coco.dataset["images"],
                        "categories": self.coco.dataset["categories"],
                        "annotations": [],
                    }
                )
            )
            coco_eval = COCOeval(self.coco, detections, iou_type)
            coco_eval.params.imgIds = image_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return coco_stats(coco_eval)


def coco_benchmark(
    ann_file: str | Path, image_dir: str | Path, distributed: bool = True, name: str = "coco"
) -> Benchmark:
    """Every image of a COCO instances json with all its categories as the class prompt."""
    from ..data.grounding import clean_category_name

    coco = load_coco(ann_file)
    categories = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    if not categories:
        raise ValueError(f"{ann_file}: no categories")
    names = tuple(clean_category_name(str(c["name"])) for c in categories)
    samples: list[EvalSample] = []
    for info in coco.dataset["images"]:
        if not isinstance(info.get("file_name"), str) or not info["file_name"]:
            raise ValueError(f"{ann_file}: image entries need a file_name, got {info!r:.100}")
        samples.append(EvalSample(Path(image_dir) / info["file_name"], info["id"], classes=names))
    evaluator = COCOEvaluator(coco, [int(c["id"]) for c in categories], distributed=distributed)
    return Benchmark(name, samples, evaluator)


def evaluate_detection(
    predictor: Any,
    ann_file: str | Path,
    image_dir: str | Path,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Box AP of `predictor` on (the first `limit` images of) a COCO json, in this process alone
    (no collective: what rank 0 runs during training)."""
    benchmark = coco_benchmark(ann_file, image_dir, distributed=False)
    benchmark.samples = benchmark.samples[:limit] if limit else benchmark.samples
    benchmark.check_images()
    return run_benchmark(predictor, benchmark, progress=progress)
