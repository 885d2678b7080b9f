"""Image pre-processing: the official normalisation and /32 padding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from glipv2.processing import image_to_tensor, pad_batch


def test_matches_official_preprocessing(fixture_dir: Path, fixture_outputs: dict[str, Any]) -> None:
    """RGB -> BGR, (x - mean) / std on 0-255 gives the exact tensor the official run used."""
    tensor = image_to_tensor(Image.open(fixture_dir / "input.png"))
    assert torch.equal(tensor, fixture_outputs["image_tensor"][0])


def test_numpy_and_pil_agree() -> None:
    array = np.random.RandomState(0).randint(0, 256, (5, 7, 3), dtype=np.uint8)
    assert torch.equal(image_to_tensor(array), image_to_tensor(Image.fromarray(array)))
    # the blue channel of the input ends up first
    expected = (float(array[0, 0, 2]) - 103.53) / 57.375
    assert image_to_tensor(array)[0, 0, 0].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), "image.png"],
)
def test_bad_images_raise(bad: Any) -> None:
    with pytest.raises(ValueError):
        image_to_tensor(bad)


def test_pad_batch_to_multiple_of_32() -> None:
    a, b = torch.ones(3, 37, 50), torch.full((3, 64, 20), 2.0)
    batch, sizes = pad_batch([a, b])
    assert batch.shape == (2, 3, 64, 64)
    assert sizes.tolist() == [[37, 50], [64, 20]]
    assert torch.equal(batch[0, :, :37, :50], a) and batch[0, :, 37:].abs().sum() == 0
    assert torch.equal(batch[1, :, :, :20], b) and batch[1, :, :, 20:].abs().sum() == 0
    assert pad_batch([a], size_divisibility=1)[0].shape == (1, 3, 37, 50)


def test_pad_batch_errors() -> None:
    with pytest.raises(ValueError, match="no images"):
        pad_batch([])
    with pytest.raises(ValueError, match="image 1"):
        pad_batch([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)])
