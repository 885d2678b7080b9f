"""Data: the ShapesWorld synthetic dataset and the VQA / captioning readers (exported here), and the
training-data pipeline (submodules).

The names are imported on first use (PEP 562), so that the `glipv2` command can show this
sub-command's help without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

# public name -> the module that defines it (tests/test_lazy_imports.py checks they agree with __all__)
_LAZY: dict[str, str] = {
    "BACKGROUNDS": ".shapes_world",
    "CATEGORIES": ".shapes_world",
    "COLOURS": ".shapes_world",
    "COLOUR_RGB": ".shapes_world",
    "CaptionDataset": ".captions",
    "CaptionSample": ".captions",
    "HELDOUT_PAIRS": ".shapes_world",
    "SHAPES": ".shapes_world",
    "SIZES": ".shapes_world",
    "SPLITS": ".shapes_world",
    "ShapeObject": ".shapes_world",
    "ShapesExample": ".shapes_world",
    "VQADataset": ".vqa",
    "VQASample": ".vqa",
    "generate_shapes_world": ".shapes_world",
    "get_categories": ".shapes_world",
    "image_rng": ".shapes_world",
    "make_example": ".shapes_world",
    "render_scene": ".shapes_world",
    "split_pairs": ".shapes_world",
}

__all__ = [
    "BACKGROUNDS",
    "CATEGORIES",
    "COLOURS",
    "COLOUR_RGB",
    "HELDOUT_PAIRS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "CaptionDataset",
    "CaptionSample",
    "ShapeObject",
    "ShapesExample",
    "VQADataset",
    "VQASample",
    "generate_shapes_world",
    "get_categories",
    "image_rng",
    "make_example",
    "render_scene",
    "split_pairs",
]

if TYPE_CHECKING:
    from .captions import CaptionDataset, CaptionSample
    from .shapes_world import (
        BACKGROUNDS,
        CATEGORIES,
        COLOUR_RGB,
        COLOURS,
        HELDOUT_PAIRS,
        SHAPES,
        SIZES,
        SPLITS,
        ShapeObject,
        ShapesExample,
        generate_shapes_world,
        get_categories,
        image_rng,
        make_example,
        render_scene,
        split_pairs,
    )
    from .vqa import VQADataset, VQASample

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
