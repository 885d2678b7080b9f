"""Evaluators with the detectron2 protocol: `reset()`, `process(inputs, outputs)`, `evaluate()`.

One module per benchmark family: `coco` (box AP with pycocotools), `lvis` (standard AP and
FixedAP with APr/APc/APf, faster-coco-eval), `odinw` (a folder of COCO datasets), `grounding`
(Flickr30k Recall@k, RefCOCO accuracy); `base` holds the protocol and the loop that feeds it.
"""

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
