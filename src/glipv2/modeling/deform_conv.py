"""Modulated deformable 3×3 convolution (DCNv2): one operation, several implementations.

* `"torchvision"`: `torchvision.ops.deform_conv2d` — the reference, and the fastest on CUDA.
* `"grid_sample"`: every tap's bilinear samples with one `F.grid_sample` (zero padding outside the
  map, as the DCN kernels), times the modulation mask, then one matmul with the weights.
* `"gather"`: the same im2col built by hand — per tap the four bilinear corners are gathered with
  `index_select` from the channels-last (H·W + 1, C) rows of the input, whose last row is zero (so
  out-of-map corners cost no branch: each index copies one pixel's C contiguous values), weighted
  by (bilinear weight × mask), and multiplied with the weights in one GEMM; the output is built in
  row tiles so that a tile's columns stay in the CPU cache. Its corner coordinates are computed in
  pixels, so it is closer to torchvision in float32 than grid_sample (whose normalised coordinates
  round).
* `"auto"` (the default): torchvision on CUDA; elsewhere (CPU) `gather` for maps of at least
  `GATHER_MIN_POSITIONS` output positions and `grid_sample` below, where grid_sample's kernel is
  faster (`benchmarks/deform_conv.py`, `benchmarks/README.md`).

All agree with torchvision to float rounding in the forward pass and in every gradient
(`tests/modeling/test_deform_conv.py`, float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from .config import DEFORMABLE_CONV_IMPLEMENTATIONS as IMPLEMENTATIONS

# below this many output positions grid_sample's CPU kernel beats the gather (measured on 64 and
# 256 channels: 44×44 maps favour grid_sample, 50×84 and larger the gather)
GATHER_MIN_POSITIONS = 2048
# floats per gathered column tile (C·K × rows·Wo): 8 MiB, well inside the L3 cache
GATHER_TILE_ELEMENTS = 1 << 21


def _sampling_positions(
    offset: torch.Tensor, kernel: tuple[int, int], stride: int, padding: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """offset (B, 2·K, Ho, Wo) as (dy, dx) per tap -> the sampled rows and columns in input
    pixels, each (B, K, Ho, Wo)."""
    b, _, ho, wo = offset.shape
    kh, kw = kernel
    k = kh * kw
    device = offset.device
    rows = torch.arange(ho, dtype=dtype, device=device) * stride - padding
    cols = torch.arange(wo, dtype=dtype, device=device) * stride - padding
    tap_y, tap_x = torch.meshgrid(
        torch.arange(kh, dtype=dtype, device=device),
        torch.arange(kw, dtype=dtype, device=device),
        indexing="ij",
    )
    offset = offset.reshape(b, k, 2, ho, wo)
    y = rows.view(1, 1, ho, 1) + tap_y.reshape(1, k, 1, 1) + offset[:, :, 0]
    x = cols.view(1, 1, 1, wo) + tap_x.reshape(1, k, 1, 1) + offset[:, :, 1]
    return y, x


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
    y, x_pos = _sampling_positions(offset, (kh, kw), stride, padding, x.dtype)
    # pixel -> grid_sample coordinates with align_corners=False: exact for any map size (even 1)
    grid = torch.stack([(2 * x_pos + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1).reshape(b, k * ho, wo, 2)
    samples = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    samples = samples.view(b, c, k, ho, wo) * mask.reshape(b, 1, k, ho, wo)
    out = torch.matmul(weight.reshape(c_out, c * k), samples.reshape(b, c * k, ho * wo)).view(
        b, c_out, ho, wo
    )
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def deform_conv2d_gather(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
    mask: torch.Tensor,
    tile_elements: int = GATHER_TILE_ELEMENTS,
) -> torch.Tensor:
    """Arguments and result as `deform_conv2d_grid_sample`; the im2col by bilinear gathers of
    channels-last rows (each index fetches one pixel's C contiguous values)."""
    b, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    k = kh * kw
    y, x_pos = _sampling_positions(offset, (kh, kw), stride, padding, x.dtype)
    y0, x0 = y.floor(), x_pos.floor()
    fy, fx = y - y0, x_pos - x0
    y0, x0 = y0.long(), x0.long()
    modulation = mask.reshape(b, k, ho, wo)
    outside = h * w  # the zero row appended to every image
    # per corner: source row and (bilinear weight × mask), each (B, Ho, Wo, K) — position-major,
    # then tap, the order of the im2col rows
    corners: list[tuple[torch.Tensor, torch.Tensor]] = []
    for dy, dx, bilinear in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        index = torch.where(inside, yy * w + xx, outside)
        corners.append((index.permute(0, 2, 3, 1), (bilinear * modulation).permute(0, 2, 3, 1)))
    weight_matrix = weight.permute(0, 2, 3, 1).reshape(c_out, k * c)  # columns: tap-major, then channel
    rows_per_tile = max(1, tile_elements // (c * k * wo))
    in_place = not torch.is_grad_enabled() or not (
        x.requires_grad
        or offset.requires_grad
        or mask.requires_grad
        or weight.requires_grad
        or (bias is not None and bias.requires_grad)
    )
    # the output is written in (B, Cout, Ho·Wo) order: each tile's GEMM W·colsᵀ lands in its column
    # range (a strided destination BLAS takes as is), so no channels-last -> NCHW copy follows
    bias_column = None if bias is None else bias.view(-1, 1)
    out = x.new_empty(b, c_out, ho * wo) if in_place else None
    images = []
    for i in range(b):
        source = torch.cat([x[i].reshape(c, h * w).t(), x.new_zeros(1, c)])  # (H·W + 1, C)
        tiles = []
        for start in range(0, ho, rows_per_tile):
            stop = min(ho, start + rows_per_tile)
            columns: torch.Tensor | None = None  # (rows·Wo·K, C)
            for index, scale in corners:
                sampled = source.index_select(0, index[i, start:stop].reshape(-1))
                factor = scale[i, start:stop].reshape(-1, 1)
                if columns is None:
                    columns = sampled.mul_(factor) if in_place else sampled * factor
                elif in_place:  # inference: no autograd graph, so accumulate without temporaries
                    columns.addcmul_(sampled, factor)
                else:
                    columns = columns + sampled * factor
            assert columns is not None
            columns = columns.view(-1, k * c)  # one im2col row per output position
            if out is not None:
                destination = out[i, :, start * wo : stop * wo]
                if bias_column is None:
                    torch.mm(weight_matrix, columns.t(), out=destination)
                else:
                    torch.addmm(bias_column, weight_matrix, columns.t(), out=destination)
            else:
                tiles.append(weight_matrix @ columns.t())
        if out is None:
            images.append(torch.cat(tiles, dim=1))
    if out is not None:
        return out.view(b, c_out, ho, wo)
    result = torch.stack(images).view(b, c_out, ho, wo)
    return result if bias_column is None else result + bias_column.view(1, -1, 1, 1)


def resolve_implementation(implementation: str, x: torch.Tensor, output_positions: int) -> str:
    """ "auto" -> the implementation used for this call (see the module docstring)."""
    if implementation != "auto":
        return implementation
    if x.device.type == "cuda":
        return "torchvision"
    return "gather" if output_positions >= GATHER_MIN_POSITIONS else "grid_sample"


def modulated_deform_conv(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
    mask: torch.Tensor,
    implementation: str = "auto",
) -> torch.Tensor:
    """x (B, C, H, W), offset (B, 2·K, Ho, Wo), mask (B, K, Ho, Wo) -> (B, Cout, Ho, Wo)."""
    chosen = resolve_implementation(implementation, x, offset.shape[-2] * offset.shape[-1])
    if chosen == "torchvision":
        return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, mask=mask)
    if chosen == "grid_sample":
        return deform_conv2d_grid_sample(x, offset, weight, bias, stride, padding, mask)
    if chosen == "gather":
        return deform_conv2d_gather(x, offset, weight, bias, stride, padding, mask)
    raise ValueError(
        f"unknown deformable conv implementation {implementation!r}; choose from {IMPLEMENTATIONS}"
    )
