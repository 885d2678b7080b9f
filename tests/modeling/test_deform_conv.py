"""The grid_sample modulated deformable conv equals torchvision's, forward and every gradient."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torchvision.ops import deform_conv2d

from glipv2 import GLIPv2
from glipv2.modeling.deform_conv import deform_conv2d_grid_sample, modulated_deform_conv
from glipv2.processing.text import load_tokenizer


@pytest.mark.parametrize("height, width, stride", [(9, 11, 1), (9, 11, 2), (1, 1, 1), (2, 7, 2)])
def test_matches_torchvision_forward_and_backward(height: int, width: int, stride: int) -> None:
    torch.manual_seed(0)
    ho, wo = (height - 1) // stride + 1, (width - 1) // stride + 1
    x = torch.randn(2, 6, height, width, dtype=torch.float64, requires_grad=True)
    # offsets large enough to sample outside the map and between pixels
    offset = (torch.randn(2, 18, ho, wo, dtype=torch.float64) * 2).requires_grad_()
    mask = torch.rand(2, 9, ho, wo, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ref = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    ours = deform_conv2d_grid_sample(x, offset, weight, bias, stride, 1, mask)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    grad = torch.randn_like(ref)
    for a, b in zip(
        torch.autograd.grad(ours, (x, offset, mask, weight, bias), grad),
        torch.autograd.grad(ref, (x, offset, mask, weight, bias), grad),
    ):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


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


def test_fixture_logits_with_either_implementation(
    fixture_model: GLIPv2, fixture_outputs: dict[str, Any]
) -> None:
    tokens = load_tokenizer(fixture_model.config.tokenizer)(
        fixture_outputs["caption"], padding="max_length", max_length=256, return_tensors="pt"
    )
    for conv in fixture_model.modules():
        if hasattr(conv, "deformable_impl"):
            conv.deformable_impl = "grid_sample"
    try:
        with torch.no_grad():
            output = fixture_model(
                fixture_outputs["image_tensor"], tokens["input_ids"], tokens["attention_mask"]
            )
    finally:
        for conv in fixture_model.modules():
            if hasattr(conv, "deformable_impl"):
                conv.deformable_impl = "torchvision"
    for ours, theirs in zip(output.logits, fixture_outputs["dot_product_logits"]):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
