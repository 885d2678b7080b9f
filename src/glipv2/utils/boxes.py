"""Box conventions, written once.

Two geometries meet in GLIP:

* **legacy** (maskrcnn-benchmark, hence the official GLIP code: anchors, box coder, targets,
  NMS, the COCO export): `x2` is the last pixel *inside* the box, so a box spans
  `x2 - x1 + 1` pixels and a COCO box [x, y, w, h] is `x2 = x + w - 1`;
* **plain** (COCO geometry, torchvision): `x2 = x + w`, width `x2 - x1`.

Boxes are tensors of shape (..., 4): xyxy = [x1, y1, x2, y2], xywh = COCO [x, y, width, height].
The helpers compute in the boxes' own dtype; callers that had Python-float arithmetic pass
float64 to get the same numbers.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou


def xywh_to_xyxy(boxes: torch.Tensor, legacy: bool = False) -> torch.Tensor:
    """(..., 4) COCO xywh -> (..., 4) xyxy: x2 = x + w - 1 with `legacy` (so that the legacy +1
    widths give back w and the +1 COCO export is exact), x2 = x + w without."""
    x, y, w, h = boxes.unbind(-1)
    one = 1 if legacy else 0
    return torch.stack([x, y, x + w - one, y + h - one], dim=-1)


def xyxy_to_xywh(boxes: torch.Tensor, legacy: bool = False) -> torch.Tensor:
    """(..., 4) xyxy -> (..., 4) COCO xywh: w = x2 - x1 + 1 with `legacy` (maskrcnn-benchmark's
    `convert("xywh")`, what the official COCO evaluation writes), w = x2 - x1 without."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    one = 1 if legacy else 0
    return torch.stack([x1, y1, x2 - x1 + one, y2 - y1 + one], dim=-1)


def legacy_to_plain(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) legacy xyxy -> (..., 4) plain xyxy of the same pixels (x2 + 1, y2 + 1): a plain
    box library (torchvision's `box_iou`, `nms`) then measures the legacy +1 geometry."""
    return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


def clip_to_image(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(..., 4) legacy xyxy -> a clipped copy inside an image of `image_size` = (height, width):
    x in [0, width - 1], y in [0, height - 1] (official `BoxList.clip_to_image`, TO_REMOVE = 1)."""
    height, width = image_size
    clipped = boxes.clone()
    clipped[..., 0::2] = clipped[..., 0::2].clamp(min=0, max=width - 1)
    clipped[..., 1::2] = clipped[..., 1::2].clamp(min=0, max=height - 1)
    return clipped


def box_iou_legacy(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) legacy xyxy -> (N, M) IoU where a box spans x2 - x1 + 1 pixels (official
    `boxlist_iou`; intersections also get the +1 and are clamped at 0)."""
    # torchvision's IoU of boxes grown by one pixel at the far corner is the +1 IoU
    # (min(x2) + 1 - max(x1) for the overlap, x2 + 1 - x1 for the sides)
    grow = boxes1.new_tensor([0.0, 0.0, 1.0, 1.0])
    return box_iou(boxes1 + grow, boxes2 + grow)
