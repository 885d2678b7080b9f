"""One anchor per location and level, in the legacy (+1 pixel) convention of maskrcnn-benchmark,
and the box coder that turns regression outputs into boxes against them."""

from __future__ import annotations

import math

import torch
from torch import nn

BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
MAX_LOG_SCALE = math.log(1000.0 / 16)


def cell_anchor(size: float, stride: int) -> torch.Tensor:
    """(1, 4) anchor centred on the first cell: [-(S-s)/2, -(S-s)/2, (S+s)/2-1, (S+s)/2-1]."""
    lo, hi = -(size - stride) / 2.0, (size + stride) / 2.0 - 1.0
    return torch.tensor([[lo, lo, hi, hi]], dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """Anchors of side `sizes[l]` at stride `strides[l]` for the 5 pyramid levels."""

    def __init__(self, sizes: tuple[int, ...], strides: tuple[int, ...]) -> None:
        super().__init__()
        self.strides = tuple(strides)
        for i, (size, stride) in enumerate(zip(sizes, strides)):
            # derived from the config, so not saved (official files carry them: `cell_anchors.N`)
            self.register_buffer(f"cell_anchor_{i}", cell_anchor(size, stride), persistent=False)

    def forward(self, feature_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """[(H_l, W_l)] -> per level (H_l·W_l, 4) xyxy anchors, row-major over the map."""
        anchors = []
        for i, ((h, w), stride) in enumerate(zip(feature_sizes, self.strides)):
            base = getattr(self, f"cell_anchor_{i}")
            ys = torch.arange(h, dtype=torch.float32, device=base.device) * stride
            xs = torch.arange(w, dtype=torch.float32, device=base.device) * stride
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)
            anchors.append((shifts + base.view(1, -1, 4)).reshape(-1, 4))
        return anchors


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(N, 4) xyxy target boxes -> (N, 4) regression targets against (N, 4) anchors."""
    wx, wy, ww, wh = BOX_CODER_WEIGHTS
    aw, ah = anchors[:, 2] - anchors[:, 0] + 1, anchors[:, 3] - anchors[:, 1] + 1
    ax, ay = (anchors[:, 2] + anchors[:, 0]) / 2, (anchors[:, 3] + anchors[:, 1]) / 2
    bw, bh = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    bx, by = (boxes[:, 2] + boxes[:, 0]) / 2, (boxes[:, 3] + boxes[:, 1]) / 2
    return torch.stack(
        [wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=1
    )


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(N, 4) regression outputs + (N, 4) anchors -> (N, 4) xyxy boxes (legacy +1 widths)."""
    wx, wy, ww, wh = BOX_CODER_WEIGHTS
    anchors = anchors.to(deltas.dtype)
    aw, ah = anchors[:, 2] - anchors[:, 0] + 1, anchors[:, 3] - anchors[:, 1] + 1
    ax, ay = (anchors[:, 2] + anchors[:, 0]) / 2, (anchors[:, 3] + anchors[:, 1]) / 2
    cx = deltas[:, 0] / wx * aw + ax
    cy = deltas[:, 1] / wy * ah + ay
    w = torch.exp((deltas[:, 2] / ww).clamp(max=MAX_LOG_SCALE)) * aw
    h = torch.exp((deltas[:, 3] / wh).clamp(max=MAX_LOG_SCALE)) * ah
    return torch.stack(
        [cx - 0.5 * (w - 1), cy - 0.5 * (h - 1), cx + 0.5 * (w - 1), cy + 0.5 * (h - 1)], dim=1
    )
