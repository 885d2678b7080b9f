"""GLIPv2Processor: the official test resize, image reading, batching with masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from glipv2 import GLIPv2Config, GLIPv2Processor
from glipv2.processing import load_image, official_resize_size


@pytest.mark.parametrize(
    "width, height, expected",
    [
        (640, 480, (800, 1066)),  # shorter side to 800, longer truncated with int()
        (480, 640, (1066, 800)),
        (2000, 500, (333, 1332)),  # longer side capped at 1333: shorter = round(1333 * 500 / 2000)
        (1333, 800, (800, 1333)),  # already the target size: unchanged
        (800, 800, (800, 800)),
        (100, 50, (666, 1332)),  # round(666.5) = 666 (half to even), then int(666 * 2)
    ],
)
def test_official_resize_size(width: int, height: int, expected: tuple[int, int]) -> None:
    assert official_resize_size(width, height, 800, 1333) == expected


def test_resize_can_be_set_and_switched_off(bert_tokenizer: Any) -> None:
    image = Image.new("RGB", (64, 48))
    small = GLIPv2Processor(bert_tokenizer, min_size=96, max_size=120)
    assert small.prepare_image(image)[0].shape == (3, 90, 120)  # capped by the longer side
    off = GLIPv2Processor(bert_tokenizer, resize=False)
    tensor, original = off.prepare_image(image)
    assert tensor.shape == (3, 48, 64) and original == (48, 64)


def test_fixture_input_gives_the_official_tensor(
    bert_tokenizer: Any, fixture_dir: Path, fixture_outputs: dict[str, Any]
) -> None:
    processor = GLIPv2Processor(bert_tokenizer, resize=False)
    batch = processor.preprocess(fixture_dir / "input.png")
    assert torch.equal(batch.pixel_values, fixture_outputs["image_tensor"])
    assert batch.image_sizes.tolist() == [[256, 256]] and batch.original_sizes.tolist() == [[256, 256]]


def test_batches_of_different_sizes_are_padded_with_masks(bert_tokenizer: Any) -> None:
    processor = GLIPv2Processor(bert_tokenizer, min_size=40, max_size=100)
    batch = processor.preprocess([Image.new("RGB", (50, 20), (255, 0, 0)), np.zeros((30, 30, 3), np.uint8)])
    # (20, 50) -> (40, 100); (30, 30) -> (40, 40); padded to a multiple of 32
    assert batch.pixel_values.shape == (2, 3, 64, 128)
    assert batch.image_sizes.tolist() == [[40, 100], [40, 40]]
    assert batch.original_sizes.tolist() == [[20, 50], [30, 30]]
    assert batch.pixel_mask[1, :40, :40].all() and not batch.pixel_mask[1, 40:].any()
    assert not batch.pixel_mask[1, :, 40:].any()
    assert (batch.pixel_values[1, :, :, 40:] == 0).all()


def test_from_config_uses_the_config_constants(bert_tokenizer: Any) -> None:
    config = GLIPv2Config(test_min_size=320, test_max_size=512, pad_to_max_query_len=False)
    processor = GLIPv2Processor.from_config(config, bert_tokenizer)
    assert (processor.min_size, processor.max_size, processor.pad_to_max_query_len) == (320, 512, False)
    assert processor.tokenize("a cat").input_ids.shape == (1, 4)


def test_image_sources_and_their_errors(tmp_path: Path) -> None:
    assert load_image(np.zeros((5, 7), np.uint8)).size == (7, 5)  # grayscale -> RGB
    assert load_image(np.zeros((5, 7, 4), np.uint8)).mode == "RGB"
    Image.new("L", (9, 4)).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png").mode == "RGB"
    with pytest.raises(ValueError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "corrupt.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="corrupt.png: cannot read"):
        load_image(tmp_path / "corrupt.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "full.png").read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated.png: cannot read"):
        load_image(tmp_path / "truncated.png")
    with pytest.raises(ValueError, match="uint8"):
        load_image(np.zeros((5, 7, 3), np.float32))
    with pytest.raises(ValueError, match="cannot use a int"):
        load_image(3)  # type: ignore[arg-type]


def test_extreme_aspect_ratios_never_resize_to_zero() -> None:
    assert official_resize_size(1, 3000, 800, 1333) == (1333, 1)
    assert official_resize_size(3000, 1, 800, 1333) == (1, 1333)
