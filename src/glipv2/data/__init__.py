"""Data: the ShapesWorld synthetic dataset (exported here) and the training-data pipeline (submodules)."""

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

__all__ = [
    "BACKGROUNDS",
    "CATEGORIES",
    "COLOURS",
    "COLOUR_RGB",
    "HELDOUT_PAIRS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "ShapeObject",
    "ShapesExample",
    "generate_shapes_world",
    "get_categories",
    "image_rng",
    "make_example",
    "render_scene",
    "split_pairs",
]
