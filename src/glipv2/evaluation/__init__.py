"""Evaluators with the detectron2 protocol: `reset()`, `process(inputs, outputs)`, `evaluate()`.

One module per benchmark family: `coco` (box AP with pycocotools), `lvis` (standard AP and
FixedAP with APr/APc/APf, faster-coco-eval), `odinw` (a folder of COCO datasets), `grounding`
(Flickr30k Recall@k, RefCOCO accuracy); `base` holds the protocol and the loop that feeds it.

The names are imported on first use (PEP 562), so that the `glipv2` command can show this
sub-command's help without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

# public name -> the module that defines it (tests/test_lazy_imports.py checks they agree with __all__)
_LAZY: dict[str, str] = {
    "Benchmark": ".base",
    "COCOEvaluator": ".coco",
    "DatasetEvaluator": ".base",
    "DatasetEvaluators": ".base",
    "EvalSample": ".base",
    "FlickrEvaluator": ".grounding",
    "LVISEvaluator": ".lvis",
    "RefExpEvaluator": ".grounding",
    "ResultsEvaluator": ".base",
    "coco_benchmark": ".coco",
    "evaluate_detection": ".coco",
    "flickr_benchmark": ".grounding",
    "gather_to_main": ".base",
    "lvis_benchmark": ".lvis",
    "odinw_benchmarks": ".odinw",
    "odinw_summary": ".odinw",
    "refexp_benchmark": ".grounding",
    "run_benchmark": ".base",
}

__all__ = [
    "Benchmark",
    "COCOEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "EvalSample",
    "FlickrEvaluator",
    "LVISEvaluator",
    "RefExpEvaluator",
    "ResultsEvaluator",
    "coco_benchmark",
    "evaluate_detection",
    "flickr_benchmark",
    "gather_to_main",
    "lvis_benchmark",
    "odinw_benchmarks",
    "odinw_summary",
    "refexp_benchmark",
    "run_benchmark",
]

if TYPE_CHECKING:
    from .base import (
        Benchmark,
        DatasetEvaluator,
        DatasetEvaluators,
        EvalSample,
        ResultsEvaluator,
        gather_to_main,
        run_benchmark,
    )
    from .coco import COCOEvaluator, coco_benchmark, evaluate_detection
    from .grounding import FlickrEvaluator, RefExpEvaluator, flickr_benchmark, refexp_benchmark
    from .lvis import LVISEvaluator, lvis_benchmark
    from .odinw import odinw_benchmarks, odinw_summary

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
