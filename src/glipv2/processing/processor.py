"""`GLIPv2Processor`: everything between user inputs and model tensors, and back.

Images: read (path, PIL or array), resized as the official test transform (shorter side
`min_size`, longer side at most `max_size`, PIL bilinear), normalised (RGB -> BGR 0-255, mean/std)
and zero-padded to a multiple of 32. Text: prompts built, tokenized with the model's padding policy,
phrase×token positive maps from the tokenizer's offsets, long vocabularies split into chunks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import PreTrainedTokenizerBase

from ..modeling.config import GLIPv2Config
from .image import image_to_tensor, pad_batch
from .prompts import Prompt, PromptChunk, chunk_class_names
from .text import TokenizedPrompts, tokenize_prompts

ImageInput = str | os.PathLike | Image.Image | np.ndarray


@dataclass
class ImageBatch:
    """pixel_values: (B, 3, H, W) normalised BGR, zero-padded; pixel_mask: (B, H, W) bool, True on
    real pixels; image_sizes: (B, 2) (h, w) after resizing, before padding; original_sizes: (B, 2)
    (h, w) of the inputs — detections are mapped back to these."""

    pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    image_sizes: torch.Tensor
    original_sizes: torch.Tensor


def official_resize_size(width: int, height: int, min_size: int, max_size: int | None) -> tuple[int, int]:
    """(height, width) after the official test resize (maskrcnn-benchmark `Resize.get_size`): the
    shorter side becomes `min_size` unless the longer one would exceed `max_size`; the longer side
    is truncated with int()."""
    size = min_size
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = round(max_size * short / long)
            if size < 1:  # an extreme aspect ratio: the official arithmetic would give a side of 0
                return (max_size, 1) if height > width else (1, max_size)
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def is_single_image(images: object) -> bool:
    """True for one image (path, PIL image or array), False for a sequence of them."""
    return isinstance(images, (str, os.PathLike, Image.Image, np.ndarray))


def load_image(source: ImageInput) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an (H, W[, 3|4]) uint8 array; unreadable or
    corrupt files raise `ValueError` naming the file."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{path}: no such image file")
        try:
            with Image.open(path) as image:
                image.load()  # decode now, so that a truncated file fails here
                return image.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"{path}: cannot read the image ({err})") from err
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (3, 4)):
            raise ValueError(f"an image array must be uint8 (H, W), (H, W, 3) or (H, W, 4), got "
                             f"{source.dtype} {source.shape}")
        return Image.fromarray(source).convert("RGB")
    raise ValueError(f"cannot use a {type(source).__name__} as an image (give a path, a PIL image or an array)")


class GLIPv2Processor:
    """Pre-processing of images and prompts for one model (its tokenizer and constants)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, min_size: int = 800, max_size: int | None = 1333,
                 resize: bool = True, size_divisibility: int = 32,
                 pixel_mean: Sequence[float] = GLIPv2Config.pixel_mean,
                 pixel_std: Sequence[float] = GLIPv2Config.pixel_std, max_query_len: int = 256,
                 pad_to_max_query_len: bool = True) -> None:
        if min_size < 1 or (max_size is not None and max_size < min_size):
            raise ValueError(f"invalid resize sizes: shorter side {min_size}, longer side at most {max_size}")
        self.tokenizer = tokenizer
        self.min_size = min_size
        self.max_size = max_size
        self.resize = resize
        self.size_divisibility = size_divisibility
        self.pixel_mean = tuple(pixel_mean)
        self.pixel_std = tuple(pixel_std)
        self.max_query_len = max_query_len
        self.pad_to_max_query_len = pad_to_max_query_len

    @classmethod
    def from_config(cls, config: GLIPv2Config, tokenizer: PreTrainedTokenizerBase, **overrides: object,
                    ) -> GLIPv2Processor:
        kwargs: dict[str, object] = {
            "min_size": config.test_min_size, "max_size": config.test_max_size,
            "size_divisibility": config.size_divisibility, "pixel_mean": config.pixel_mean,
            "pixel_std": config.pixel_std, "max_query_len": config.max_query_len,
            "pad_to_max_query_len": config.pad_to_max_query_len}
        kwargs.update(overrides)
        return cls(tokenizer, **kwargs)  # type: ignore[arg-type]

    # --- images ---------------------------------------------------------------------------------
    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the model sees for an input of this size."""
        if not self.resize:
            return height, width
        return official_resize_size(width, height, self.min_size, self.max_size)

    def prepare_image(self, image: ImageInput) -> tuple[torch.Tensor, tuple[int, int]]:
        """-> ((3, h, w) normalised tensor at model resolution, original (height, width))."""
        pil = load_image(image)
        width, height = pil.size
        h, w = self.resized_size(width, height)
        if (h, w) != (height, width):
            pil = pil.resize((w, h), Image.BILINEAR)  # what torchvision's F.resize does on PIL images
        return image_to_tensor(pil, self.pixel_mean, self.pixel_std), (height, width)

    def batch_images(self, tensors: Sequence[torch.Tensor], original_sizes: Sequence[tuple[int, int]]) -> ImageBatch:
        pixel_values, image_sizes = pad_batch(tensors, self.size_divisibility)
        mask = torch.zeros(pixel_values.shape[0], *pixel_values.shape[-2:], dtype=torch.bool)
        for i, (h, w) in enumerate(image_sizes.tolist()):
            mask[i, :h, :w] = True
        return ImageBatch(pixel_values, mask, image_sizes, torch.tensor(list(original_sizes), dtype=torch.long))

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> ImageBatch:
        """Images -> one padded batch (see `ImageBatch`)."""
        if is_single_image(images):
            images = [images]
        prepared = [self.prepare_image(image) for image in images]
        return self.batch_images([t for t, _ in prepared], [s for _, s in prepared])

    # --- text -----------------------------------------------------------------------------------
    def tokenize(self, prompts: str | Sequence[str]) -> TokenizedPrompts:
        return tokenize_prompts(self.tokenizer, prompts if isinstance(prompts, str) else list(prompts),
                                self.max_query_len, self.pad_to_max_query_len)

    def positive_map(self, prompt: Prompt, tokens: TokenizedPrompts, index: int = 0) -> torch.Tensor:
        """(K, T) bool map of prompt `index` of a tokenized batch."""
        return prompt.positive_map(tokens.offsets[index], tokens.attention_mask[index])

    def chunk_classes(self, class_names: Sequence[str], chunk_size: int | None = None) -> list[PromptChunk]:
        """A vocabulary as prompts that each fit the model's `max_query_len` tokens."""
        return chunk_class_names(class_names, self.tokenizer, self.max_query_len, chunk_size)
