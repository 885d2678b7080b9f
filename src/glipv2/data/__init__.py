"""Data: the ShapesWorld synthetic dataset and the VQA / captioning readers (exported here), and the
training-data pipeline (submodules)."""

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
