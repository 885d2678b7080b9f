"""Pre- and post-processing of images and prompts."""

from .image import image_to_tensor, pad_batch
from .processor import GLIPv2Processor, ImageBatch, load_image, official_resize_size
from .prompts import (
    Prompt,
    PromptChunk,
    PromptWarning,
    chunk_class_names,
    detection_prompt,
    find_phrase,
    grounding_prompt,
    label_scores,
)
from .text import TokenizedPrompts, tokenize_prompts

__all__ = [
    "GLIPv2Processor",
    "ImageBatch",
    "Prompt",
    "PromptChunk",
    "PromptWarning",
    "TokenizedPrompts",
    "chunk_class_names",
    "detection_prompt",
    "find_phrase",
    "grounding_prompt",
    "image_to_tensor",
    "label_scores",
    "load_image",
    "official_resize_size",
    "pad_batch",
    "tokenize_prompts",
]
