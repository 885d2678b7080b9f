"""Evaluators with the detectron2 protocol: `reset()`, `process(inputs, outputs)`, `evaluate()`."""

from .coco import COCOEvaluator, evaluate_detection

__all__ = ["COCOEvaluator", "evaluate_detection"]
