"""Inference: post-processing, the `Predictor`, results, visualisation."""

from ..processing.postprocess import PostProcessor, RawDetections, legacy_nms
from .detections import Detections
from .predictor import Predictor, TextFeatureCache, Vocabulary

__all__ = [
    "Detections",
    "PostProcessor",
    "Predictor",
    "RawDetections",
    "TextFeatureCache",
    "Vocabulary",
    "legacy_nms",
]
