"""Image pre-processing as the official GLIP: RGB -> BGR, 0-255, minus mean, over std; batches
are zero-padded at the bottom/right to a multiple of `size_divisibility`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..modeling.config import GLIPv2Config


def image_to_tensor(
    image: Image.Image | np.ndarray,
    mean: Sequence[float] = GLIPv2Config.pixel_mean,
    std: Sequence[float] = GLIPv2Config.pixel_std,
) -> torch.Tensor:
    """An RGB image (PIL, or uint8 array (H, W, 3)) -> (3, H, W) float32 normalised BGR tensor."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise ValueError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 array of shape (H, W, 3), got {array.dtype} {array.shape}")
    bgr = torch.from_numpy(np.ascontiguousarray(array[:, :, ::-1])).permute(2, 0, 1).float()
    return (bgr - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def padded_size(height: int, width: int, size_divisibility: int = 32) -> tuple[int, int]:
    """(height, width) rounded up to multiples of `size_divisibility` (the batch tensor's size)."""
    if size_divisibility <= 1:
        return height, width
    return -(-height // size_divisibility) * size_divisibility, -(
        -width // size_divisibility
    ) * size_divisibility


def pad_batch(
    images: Sequence[torch.Tensor], size_divisibility: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """[(3, H_i, W_i)] -> (pixel_values (B, 3, H, W) zero-padded, image_sizes (B, 2) of (H_i, W_i))."""
    if len(images) == 0:
        raise ValueError("no images to batch")
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image {i} must be a (3, H, W) tensor, got {tuple(image.shape)}")
    h, w = padded_size(
        max(int(im.shape[1]) for im in images), max(int(im.shape[2]) for im in images), size_divisibility
    )
    batch = images[0].new_zeros(len(images), 3, h, w)
    for i, image in enumerate(images):
        batch[i, :, : image.shape[1], : image.shape[2]] = image
    sizes = torch.tensor([[int(im.shape[1]), int(im.shape[2])] for im in images], dtype=torch.long)
    return batch, sizes
