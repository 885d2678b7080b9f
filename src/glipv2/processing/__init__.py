"""Pre- and post-processing of images and prompts."""

from .image import image_to_tensor, pad_batch
from .text import TokenizedPrompts, tokenize_prompts

__all__ = ["TokenizedPrompts", "image_to_tensor", "pad_batch", "tokenize_prompts"]
