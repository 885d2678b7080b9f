"""Each modulated deformable conv implementation equals torchvision's, forward and every gradient."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import torch
from torchvision.ops import deform_conv2d

from glipv2 import GLIPv2
from glipv2.modeling.deform_conv import (
    GATHER_MIN_POSITIONS,
    deform_conv2d_gather,
    deform_conv2d_grid_sample,
    modulated_deform_conv,
    resolve_implementation,
)
from glipv2.processing.text import load_tokenizer

IMPLEMENTATIONS = {
    "grid_sample": deform_conv2d_grid_sample,
    "gather": deform_conv2d_gather,
    # a tile of one output row: the row-tiled im2col stitched back together
    "gather_row_tiles": partial(deform_conv2d_gather, tile_elements=1),
}


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("height, width, stride", [(9, 11, 1), (9, 11, 2), (1, 1, 1), (2, 7, 2)])
def test_matches_torchvision_forward_and_backward(
    implementation: str, height: int, width: int, stride: int
) -> None:
    torch.manual_seed(0)
    ho, wo = (height - 1) // stride + 1, (width - 1) // stride + 1
    x = torch.randn(2, 6, height, width, dtype=torch.float64, requires_grad=True)
    # offsets large enough to sample outside the map and between pixels
    offset = (torch.randn(2, 18, ho, wo, dtype=torch.float64) * 2).requires_grad_()
    mask = torch.rand(2, 9, ho, wo, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ref = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    ours = IMPLEMENTATIONS[implementation](x, offset, weight, bias, stride, 1, mask)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    grad = torch.randn_like(ref)
    for a, b in zip(
        torch.autograd.grad(ours, (x, offset, mask, weight, bias), grad),
        torch.autograd.grad(ref, (x, offset, mask, weight, bias), grad),
    ):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("tile_elements", [1, 1 << 21])
def test_gather_inference_path_matches_torchvision(tile_elements: int) -> None:
    """Without autograd the gather accumulates in place; same numbers, integer offsets included
    (a corner exactly on the map's edge)."""
    torch.manual_seed(1)
    x = torch.randn(1, 8, 13, 17, dtype=torch.float64)
    offset = torch.randn(1, 18, 13, 17, dtype=torch.float64) * 3
    offset[:, :6] = offset[:, :6].round()
    mask = torch.rand(1, 9, 13, 17, dtype=torch.float64)
    weight = torch.randn(4, 8, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        ref = deform_conv2d(x, offset, weight, None, padding=1, mask=mask)
        ours = deform_conv2d_gather(x, offset, weight, None, 1, 1, mask, tile_elements=tile_elements)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)


def test_auto_picks_per_device_and_size() -> None:
    cpu = torch.zeros(1)
    assert resolve_implementation("auto", cpu, GATHER_MIN_POSITIONS) == "gather"
    assert resolve_implementation("auto", cpu, GATHER_MIN_POSITIONS - 1) == "grid_sample"
    # torchvision's op only on CUDA; other devices take the CPU rule
    assert resolve_implementation("auto", torch.zeros(1, device="meta"), 10**6) == "gather"
    assert resolve_implementation("grid_sample", cpu, 10**6) == "grid_sample"


def test_unknown_implementation_is_an_error() -> None:
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="unknown deformable conv implementation"):
        modulated_deform_conv(
            x,
            torch.zeros(1, 18, 2, 2),
            torch.zeros(1, 1, 3, 3),
            None,
            1,
            1,
            torch.zeros(1, 9, 2, 2),
            "cuda_kernel",
        )


@pytest.mark.parametrize("implementation", ["torchvision", "grid_sample", "gather"])
def test_fixture_logits_with_each_implementation(
    fixture_model: GLIPv2, fixture_outputs: dict[str, Any], implementation: str
) -> None:
    tokens = load_tokenizer(fixture_model.config.tokenizer)(
        fixture_outputs["caption"], padding="max_length", max_length=256, return_tensors="pt"
    )
    n_real = int(tokens["attention_mask"].sum())
    fixture_model.set_compute(deformable_conv_impl=implementation)
    try:
        with torch.no_grad():
            output = fixture_model(
                fixture_outputs["image_tensor"], tokens["input_ids"], tokens["attention_mask"]
            )
    finally:
        fixture_model.set_compute_path("fast")
    for ours, theirs in zip(output.logits, fixture_outputs["dot_product_logits"]):
        torch.testing.assert_close(ours[..., :n_real], theirs[..., :n_real], atol=1e-4, rtol=1e-4)


def test_gather_with_only_the_bias_trainable() -> None:
    """A bias that needs a gradient keeps the gather on its autograd path (no out= GEMMs)."""
    torch.manual_seed(5)
    x, offset, mask = torch.randn(1, 3, 6, 7), torch.randn(1, 18, 6, 7), torch.rand(1, 9, 6, 7)
    weight, bias = torch.randn(4, 3, 3, 3), torch.zeros(4, requires_grad=True)
    out = deform_conv2d_gather(x, offset, weight, bias, 1, 1, mask)
    (grad,) = torch.autograd.grad(out.sum(), bias)
    torch.testing.assert_close(grad, torch.full((4,), 42.0))
