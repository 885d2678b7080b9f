"""Pre- and post-processing of images and prompts."""

from .image import image_to_tensor, pad_batch

__all__ = ["image_to_tensor", "pad_batch"]
