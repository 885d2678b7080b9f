"""ATSS target assignment (Adaptive Training Sample Selection), as GLIP trains its dense head.

For every ground-truth box:
1. per pyramid level, the `topk` anchors whose centres are closest to the box centre are the
   candidates (official `ATSS.TOPK` 9 × anchors per location, which is 1 here);
2. the box's IoU threshold is mean + std (unbiased) of the candidates' IoUs, pooled over levels;
3. a candidate is positive when its IoU reaches the threshold *and* its centre lies inside the
   box by more than 0.01 px on all four sides.
An anchor that is positive for several boxes keeps the one it overlaps most. IoUs use the legacy
+1 pixel convention of maskrcnn-benchmark's `boxlist_iou` (the anchors are defined in it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...utils.boxes import box_iou_legacy
from ..anchors import encode_boxes

ATSS_TOPK = 9  # official MODEL.ATSS.TOPK (× 1 anchor per location)
CENTRE_INSIDE_MARGIN = 0.01  # official: the anchor centre must be inside the box by more than this


@dataclass
class ATSSTargets:
    """The assignment of one image's anchors (A = all levels concatenated, P3 first).

    matched_gt:         (A,) long, index of the assigned ground-truth box, -1 for background
    regression_targets: (A, 4) `encode_boxes(gt, anchor)` for positives, 0 for background
    centerness_targets: (A,) sqrt(min(l,r)/max(l,r) · min(t,b)/max(t,b)) of the anchor centre
                        w.r.t. its box for positives, 0 for background
    """

    matched_gt: torch.Tensor
    regression_targets: torch.Tensor
    centerness_targets: torch.Tensor

    @property
    def positive(self) -> torch.Tensor:
        """(A,) bool, the positive anchors."""
        return self.matched_gt >= 0

    @property
    def num_positive(self) -> int:
        return int(self.positive.sum())


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) xyxy -> (N, 2) centres ((x1+x2)/2, (y1+y2)/2), as the official code (no +1)."""
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


def centerness_targets(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(N, 2) points and (N, 4) xyxy boxes they fall in -> (N,) FCOS centerness
    sqrt(min(l,r)/max(l,r) · min(t,b)/max(t,b)), distances to the box sides without +1 (official
    ATSS `compute_centerness_targets`, which recovers the box by decoding the regression target —
    an exact round trip of `encode_boxes`)."""
    left, top = points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1]
    right, bottom = boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]
    lr = torch.minimum(left, right) / torch.maximum(left, right)
    tb = torch.minimum(top, bottom) / torch.maximum(top, bottom)
    return torch.sqrt(lr * tb)


def atss_assign(
    anchors: torch.Tensor, num_anchors_per_level: Sequence[int], gt_boxes: torch.Tensor, topk: int = ATSS_TOPK
) -> ATSSTargets:
    """Assign the anchors of one image to its ground-truth boxes.

    anchors:               (A, 4) xyxy, all levels concatenated (legacy +1 convention)
    num_anchors_per_level: A_l per level, summing to A
    gt_boxes:              (N, 4) xyxy in the same (input) frame; N may be 0 (all background)
    topk:                  candidates per level and box (9 × anchors per location)
    """
    if anchors.ndim != 2 or anchors.shape[1] != 4:
        raise ValueError(f"anchors must be (A, 4), got {tuple(anchors.shape)}")
    if sum(num_anchors_per_level) != anchors.shape[0]:
        raise ValueError(
            f"num_anchors_per_level {list(num_anchors_per_level)} does not sum to {anchors.shape[0]} anchors"
        )
    gt_boxes = gt_boxes.to(device=anchors.device, dtype=anchors.dtype).reshape(-1, 4)
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    matched = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    regression = anchors.new_zeros((num_anchors, 4))
    centerness = anchors.new_zeros((num_anchors,))
    if num_gt == 0 or num_anchors == 0:
        return ATSSTargets(matched, regression, centerness)

    ious = box_iou_legacy(anchors, gt_boxes)  # (A, N)
    anchor_points = box_centres(anchors)
    distances = torch.cdist(anchor_points, box_centres(gt_boxes))  # (A, N) euclidean centre distance

    # 1. candidates: the k closest anchor centres of every level, for every box
    candidates, start = [], 0
    for count in num_anchors_per_level:
        if count > 0:
            k = min(topk, count)
            closest = distances[start : start + count].topk(k, dim=0, largest=False).indices
            candidates.append(closest + start)
        start += count
    candidate_idx = torch.cat(candidates, dim=0)  # (K, N)

    # 2. adaptive IoU threshold per box: mean + unbiased std of its candidates' IoUs
    candidate_ious = ious.gather(0, candidate_idx)
    threshold = candidate_ious.mean(dim=0) + candidate_ious.std(dim=0)
    is_pos = candidate_ious >= threshold[None, :]

    # 3. the candidate's centre must lie strictly inside the box
    cx, cy = anchor_points[candidate_idx, 0], anchor_points[candidate_idx, 1]  # (K, N)
    margins = torch.stack(
        [cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy]
    )
    is_pos &= margins.min(dim=0).values > CENTRE_INSIDE_MARGIN

    # an anchor positive for several boxes keeps the highest-IoU one
    gt_idx = torch.arange(num_gt, device=anchors.device).expand_as(candidate_idx)
    rows, cols = candidate_idx[is_pos], gt_idx[is_pos]
    scores = torch.full_like(ious, float("-inf"))
    scores[rows, cols] = ious[rows, cols]
    best, best_gt = scores.max(dim=1)
    positive = best > float("-inf")
    matched[positive] = best_gt[positive]

    matched_boxes = gt_boxes[matched[positive]]
    regression[positive] = encode_boxes(matched_boxes, anchors[positive])
    centerness[positive] = centerness_targets(anchor_points[positive], matched_boxes)
    return ATSSTargets(matched, regression, centerness)
