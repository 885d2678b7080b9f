"""Modulated deformable 3×3 convolution (DCNv2), two interchangeable implementations.

* `"torchvision"` (default): `torchvision.ops.deform_conv2d`.
* `"grid_sample"`: the same arithmetic from stock PyTorch ops — every tap's bilinear samples with
  one `F.grid_sample` (zero padding outside the map, as the DCN kernels), times the modulation
  mask, then one matmul with the weights. It matches torchvision to float rounding in the forward
  pass and in every gradient and is faster on CPU, where torchvision's backward dominates training
  time (figures: `benchmarks/deform_conv.py`, `benchmarks/README.md`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

IMPLEMENTATIONS = ("torchvision", "grid_sample")


def deform_conv2d_grid_sample(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
    mask: torch.Tensor,
) -> torch.Tensor:
    """x: (B, C, H, W); offset: (B, 2·K, Ho, Wo) as (dy, dx) per tap; mask: (B, K, Ho, Wo);
    weight: (Cout, C, kh, kw) with K = kh·kw; -> (B, Cout, Ho, Wo)."""
    b, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    k = kh * kw
    rows = torch.arange(ho, dtype=x.dtype, device=x.device) * stride - padding
    cols = torch.arange(wo, dtype=x.dtype, device=x.device) * stride - padding
    tap_y, tap_x = torch.meshgrid(
        torch.arange(kh, dtype=x.dtype, device=x.device),
        torch.arange(kw, dtype=x.dtype, device=x.device),
        indexing="ij",
    )
    offset = offset.reshape(b, k, 2, ho, wo)
    y = rows.view(1, 1, ho, 1) + tap_y.reshape(1, k, 1, 1) + offset[:, :, 0]  # (B, K, Ho, Wo) in pixels
    x_pos = cols.view(1, 1, 1, wo) + tap_x.reshape(1, k, 1, 1) + offset[:, :, 1]
    # pixel -> grid_sample coordinates with align_corners=False: exact for any map size (even 1)
    grid = torch.stack([(2 * x_pos + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1).reshape(b, k * ho, wo, 2)
    samples = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    samples = samples.view(b, c, k, ho, wo) * mask.reshape(b, 1, k, ho, wo)
    out = torch.matmul(weight.reshape(c_out, c * k), samples.reshape(b, c * k, ho * wo)).view(
        b, c_out, ho, wo
    )
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def modulated_deform_conv(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
    mask: torch.Tensor,
    implementation: str = "torchvision",
) -> torch.Tensor:
    if implementation == "torchvision":
        return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, mask=mask)
    if implementation == "grid_sample":
        return deform_conv2d_grid_sample(x, offset, weight, bias, stride, padding, mask)
    raise ValueError(
        f"unknown deformable conv implementation {implementation!r}; choose from {IMPLEMENTATIONS}"
    )
