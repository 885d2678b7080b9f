"""Inference: post-processing, the `Predictor`, results, visualisation.

The names are imported on first use (PEP 562), so that `glipv2.inference.command` — the
`glipv2 predict` sub-parser — can be imported to show its help without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

# public name -> the module that defines it (relative to this package)
_LAZY: dict[str, str] = {
    "PostProcessor": "..processing.postprocess",
    "RawDetections": "..processing.postprocess",
    "legacy_nms": "..processing.postprocess",
    "Detections": ".detections",
    "Predictor": ".predictor",
    "TextFeatureCache": ".predictor",
    "Vocabulary": ".predictor",
    "draw_detections": ".visualize",
    "draw_text_banner": ".visualize",
}

# the names of `_LAZY` (tests/test_lazy_imports.py checks they agree)
__all__ = [
    "Detections",
    "PostProcessor",
    "Predictor",
    "RawDetections",
    "TextFeatureCache",
    "Vocabulary",
    "draw_detections",
    "draw_text_banner",
    "legacy_nms",
]

if TYPE_CHECKING:
    from ..processing.postprocess import PostProcessor, RawDetections, legacy_nms
    from .detections import Detections
    from .predictor import Predictor, TextFeatureCache, Vocabulary
    from .visualize import draw_detections, draw_text_banner


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
