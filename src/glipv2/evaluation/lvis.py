"""LVIS box AP: the standard figure (300 detections per image) and FixedAP, both with APr/APc/APf.

The benchmark is the official GLIP LVIS run: all categories sorted by id as a detection prompt,
split into chunks of 40 names (one forward pass each, global label ids kept), 300 detections per
chunk, the chunks' detections concatenated per image. Two figures are computed from the same
predictions:

* standard LVIS AP — per image only the 300 highest-scoring detections (across categories, as
  the LVIS API's `LVISResults` keeps them), then the LVIS evaluation with 300 detections per image;
* FixedAP (Dave et al. 2021, "Evaluating Large-Vocabulary Object Detectors: The Devil is in the
  Details"; what official GLIP reports for LVIS, `LVIS_USE_NORMAL_AP False`) — no per-image cap;
  per category the 10,000 highest-scoring detections over the whole dataset.

The LVIS protocol (a category is only evaluated on the images where it is verified present
or absent (`neg_category_ids`), unmatched detections of `not_exhaustive_category_ids` are not
false positives, and the rare / common / frequent groups) comes from faster-coco-eval's
`lvis_style` mode: the official `lvis` package cannot be used, it calls `np.float`, which
numpy 2 removed.

Boxes are written as official GLIP's LVIS evaluator writes them, w = x2 - x1 (no legacy +1,
unlike its COCO path).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..inference.detections import Detections
from .base import Benchmark, EvalSample, Results, ResultsEvaluator, check_known_ids
from .coco import check_instances, read_annotations

DETS_PER_IMAGE = 300  # LVIS API default (LVISResults / LVISEval max_dets)
FIXED_AP_DETS_PER_CATEGORY = 10_000  # Dave et al.'s per-category budget, as official GLIP uses it
FREQUENCIES = ("r", "c", "f")
# faster-coco-eval stats_as_dict key -> our name (AR at the per-image cap is added per evaluator)
_AP_KEYS = {
    "AP": "AP_all",
    "AP50": "AP_50",
    "AP75": "AP_75",
    "APs": "AP_small",
    "APm": "AP_medium",
    "APl": "AP_large",
    "APr": "APr",
    "APc": "APc",
    "APf": "APf",
}
FIXED_KEYS = ("AP", "AP50", "AP75", "APr", "APc", "APf")


def load_lvis(ann_file: str | Path) -> Any:
    """A faster-coco-eval `COCO` of an LVIS json, with one-line errors for a missing or malformed
    file or categories without an LVIS `frequency` ("r", "c" or "f"), which APr/APc/APf need."""
    from faster_coco_eval import COCO

    data = read_annotations(ann_file, ("images", "annotations", "categories"))
    check_instances(ann_file, data)
    bad = [c["id"] for c in data["categories"] if c.get("frequency") not in FREQUENCIES]
    if bad:
        raise ValueError(
            f"{ann_file}: not an LVIS annotation file: {len(bad)} categories without a frequency "
            f"'r', 'c' or 'f' (ids {bad[:5]})"
        )
    if not data["categories"]:
        raise ValueError(f"{ann_file}: no categories")
    return COCO(data)  # its index log goes to logger.debug, nothing printed


def lvis_image_path(image_dir: Path, info: dict[str, Any]) -> Path:
    """Where an LVIS image lies: `file_name` when the json has one (GLIP's minival file inserts
    it); LVIS v1 itself only has `coco_url` (".../train2017/000000155379.jpg"): its basename in
    `image_dir`, or, when that is absent but `image_dir/<split>/<basename>` exists, the COCO
    layout with split folders (LVIS v1 val holds images of both COCO train2017 and val2017)."""
    if info.get("file_name"):
        return image_dir / str(info["file_name"])
    url = str(info.get("coco_url") or "")
    if not url:
        raise ValueError(f"image {info.get('id')}: neither file_name nor coco_url")
    parts = url.rstrip("/").split("/")
    name, split = parts[-1], (parts[-2] if len(parts) > 1 else "")
    flat = image_dir / name
    if not flat.is_file() and split and (image_dir / split / name).is_file():
        return image_dir / split / name
    return flat


def _ranked(results: Results) -> list[int]:
    """Indices of `results` by descending score, ties in input order (a stable sort, like the
    Python sorts of the LVIS API and Dave et al.'s script)."""
    return sorted(range(len(results)), key=lambda i: -float(results[i]["score"]))


def _top_indices(results: Results, key: str, k: int) -> set[int]:
    """Indices of the k highest-scoring entries within each group of equal `results[i][key]`."""
    counts: dict[Any, int] = defaultdict(int)
    kept = set()
    for i in _ranked(results):
        group = results[i][key]
        if counts[group] < k:
            counts[group] += 1
            kept.add(i)
    return kept


def top_per_image(results: Results, k: int) -> Results:
    """Per image the k highest-scoring entries (all categories together); input order kept."""
    kept = _top_indices(results, "image_id", k)
    return [r for i, r in enumerate(results) if i in kept]


def top_per_category(results: Results, k: int) -> Results:
    """Per category the k highest-scoring entries over all images; input order kept."""
    kept = _top_indices(results, "category_id", k)
    return [r for i, r in enumerate(results) if i in kept]


def _none_if_undefined(value: float) -> float | None:
    # faster-coco-eval writes -1 where nothing is defined (e.g. no rare category in the images)
    return float(value) if value >= 0 else None


class LVISEvaluator(ResultsEvaluator):
    """Standard LVIS box AP and FixedAP of detections against an LVIS json.

    category_ids: the category id of each label index (default: all categories sorted by id,
    the order of `lvis_benchmark`'s prompt). dets_per_image: the per-image cap of the standard
    figure (300); fixed_dets_per_category: FixedAP's per-category budget over the dataset (10,000).

    `evaluate()` -> {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
    "AR300"}, "bbox_fixed": {"AP", "AP50", "AP75", "APr", "APc", "APf"}} as fractions in [0, 1],
    None where undefined (no ground truth of that kind in the evaluated images). The AR key names
    the cap ("AR300" by default).

    Neither figure needs more than each image's top `dets_per_image` and each category's top
    `fixed_dets_per_category` entries, so the evaluator drops the rest as it goes (`compact`):
    a chunked LVIS run yields up to 31 x 300 detections per image, which would not fit in memory
    for the whole dataset. What `predictions()` returns is this sufficient subset.
    """

    def __init__(
        self,
        ann_file: str | Path | Any,
        category_ids: Sequence[int] | None = None,
        dets_per_image: int = DETS_PER_IMAGE,
        fixed_dets_per_category: int = FIXED_AP_DETS_PER_CATEGORY,
        distributed: bool = True,
    ) -> None:
        if dets_per_image < 1 or fixed_dets_per_category < 1:
            raise ValueError(
                f"dets_per_image ({dets_per_image}) and fixed_dets_per_category "
                f"({fixed_dets_per_category}) must be >= 1"
            )
        self.lvis = ann_file if hasattr(ann_file, "loadRes") else load_lvis(ann_file)
        known = sorted(self.lvis.getCatIds())
        self.category_ids = known if category_ids is None else [int(c) for c in category_ids]
        unknown = sorted(set(self.category_ids) - set(known))
        if unknown:
            raise ValueError(f"{ann_file}: unknown category ids {unknown[:10]}")
        self.dets_per_image = int(dets_per_image)
        self.fixed_dets_per_category = int(fixed_dets_per_category)
        # entries held before the first compaction; doubles after each so compaction costs
        # O(n log n) over a run
        self.compact_threshold = 1_000_000
        super().__init__(distributed)

    @property
    def ar_key(self) -> str:
        return f"AR{self.dets_per_image}"

    def reset(self) -> None:
        super().reset()
        self._next_compaction = getattr(self, "compact_threshold", 1_000_000)

    def to_results(self, sample: EvalSample, detections: Detections) -> Results:
        labels = detections.labels
        if len(detections) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.category_ids)):
            raise ValueError(
                f"image {sample.image_id}: detection labels {int(labels.min())}..{int(labels.max())} "
                f"outside the {len(self.category_ids)} categories of the prompt"
            )
        return detections.to_coco(sample.image_id, self.category_ids, legacy_box_size=False)

    def process(self, inputs: Sequence[EvalSample], outputs: Sequence[Detections]) -> None:
        super().process(inputs, outputs)
        if len(self.results) > self._next_compaction:
            self.compact()
            self._next_compaction = max(self.compact_threshold, 2 * len(self.results))

    def compact(self) -> None:
        """Drop the entries that are neither in their image's top `dets_per_image` nor in their
        category's top `fixed_dets_per_category`. Exact for both figures: an entry outside a top-k
        of the entries so far stays outside it whatever comes later (ties: earlier entries first,
        and the kept entries keep their order)."""
        keep = _top_indices(self.results, "image_id", self.dets_per_image) | _top_indices(
            self.results, "category_id", self.fixed_dets_per_category
        )
        self.results = [r for i, r in enumerate(self.results) if i in keep]

    def known_image_ids(self) -> list[int]:
        return sorted(self.lvis.getImgIds())

    def validate_results(self, results: Results) -> None:
        super().validate_results(results)
        check_known_ids(results, self.lvis.getImgIds(), self.lvis.getCatIds())

    def score(self, results: Results, image_ids: list[int]) -> dict[str, Any]:
        if not image_ids:
            return {
                "bbox": dict.fromkeys([*_AP_KEYS, self.ar_key], 0.0),
                "bbox_fixed": dict.fromkeys(FIXED_KEYS, 0.0),
            }
        evaluated = set(image_ids)
        # only the evaluated images compete for a category's FixedAP budget
        results = [r for r in results if r["image_id"] in evaluated]

        standard = self._lvis_eval(
            top_per_image(results, self.dets_per_image), image_ids, self.dets_per_image
        )
        fixed_results = top_per_category(results, self.fixed_dets_per_category)
        per_image: dict[Any, int] = defaultdict(int)
        for r in fixed_results:
            per_image[r["image_id"]] += 1
        # FixedAP has no per-image limit: a cap of the largest per-image count cuts nothing
        fixed = self._lvis_eval(fixed_results, image_ids, max(per_image.values(), default=1))

        bbox = {name: _none_if_undefined(standard[key]) for name, key in _AP_KEYS.items()}
        bbox[self.ar_key] = _none_if_undefined(standard["AR_all"])  # AR at maxDets[-1], the cap
        return {
            "bbox": bbox,
            "bbox_fixed": {name: _none_if_undefined(fixed[_AP_KEYS[name]]) for name in FIXED_KEYS},
        }

    def _lvis_eval(self, results: Results, image_ids: list[int], max_dets: int) -> dict[str, float]:
        """faster-coco-eval's LVIS-style box evaluation with one per-image detection cap ->
        its `stats_as_dict` (-1 where undefined)."""
        from faster_coco_eval import COCOeval_faster

        # loadRes adds id / area / segmentation to the entries in place: give it copies
        detections = self.lvis.loadRes([dict(r) for r in results])
        lvis_eval = COCOeval_faster(
            self.lvis, detections, "bbox", lvis_style=True, print_function=lambda *args, **kwargs: None
        )
        lvis_eval.params.imgIds = list(image_ids)
        lvis_eval.params.maxDets = [int(max_dets)]
        lvis_eval.evaluate()
        lvis_eval.accumulate()
        lvis_eval.summarize()
        return lvis_eval.stats_as_dict


def lvis_benchmark(
    ann_file: str | Path,
    image_dir: str | Path,
    chunk_size: int = 40,
    detections_per_image: int = DETS_PER_IMAGE,
    distributed: bool = True,
) -> Benchmark:
    """Every image of an LVIS json with all its categories (sorted by id, names cleaned as
    official: "bear_(animal)" -> "bear") as a detection prompt in chunks of `chunk_size` names;
    the post-processing keeps `detections_per_image` per chunk, the evaluator caps the
    concatenation per image for the standard figure."""
    from ..data.grounding import clean_category_name

    lvis = load_lvis(ann_file)
    categories = sorted(lvis.dataset["categories"], key=lambda c: c["id"])
    names = tuple(clean_category_name(str(c["name"])) for c in categories)
    image_dir = Path(image_dir)
    try:
        samples = [
            EvalSample(lvis_image_path(image_dir, info), int(info["id"]), classes=names)
            for info in lvis.dataset["images"]
        ]
    except ValueError as err:
        raise ValueError(f"{ann_file}: {err}") from None
    evaluator = LVISEvaluator(
        lvis, [int(c["id"]) for c in categories], dets_per_image=detections_per_image, distributed=distributed
    )
    return Benchmark(
        "lvis", samples, evaluator, detections_per_image=detections_per_image, chunk_size=chunk_size
    )
