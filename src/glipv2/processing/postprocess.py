"""Detections from region–word logits, exactly as the official `ATSSPostProcessor` (reference §7).

Per image and level: sigmoid of S = O·Pᵀ, mean over each label's tokens, candidates where that
score > `inference_threshold` (before centerness), score × sigmoid(centerness), top
`pre_nms_top_n`, legacy +1 decode, clip to the unpadded image, `remove_small_boxes`. Over all
levels: per-label NMS with the +1 IoU (the CUDA `ml_nms` semantics, not the official CPU branch,
which returns wrong boxes), then the `detections_per_image` best by kthvalue. Reported score =
sqrt(token score × centerness).

This is the processing layer's half of inference (the processor owns it): it reads model outputs
and the prompt's positive maps, and imports nothing from `glipv2.inference`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import nms

from ..modeling.anchors import decode_boxes
from ..modeling.config import GLIPv2Config
from ..modeling.outputs import GLIPv2Output
from ..utils.boxes import clip_to_image, legacy_to_plain, xyxy_to_xywh
from .prompts import label_scores


@dataclass
class RawDetections:
    """Detections of one image in the model's input frame. boxes: (N, 4) xyxy; scores: (N,);
    labels: (N,) int64, 0-based label index into the prompt's labels; masks: optionally (N, M, M)
    mask probabilities inside each box (models with a mask head)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, index: torch.Tensor) -> RawDetections:
        return RawDetections(
            self.boxes[index],
            self.scores[index],
            self.labels[index],
            None if self.masks is None else self.masks[index],
        )

    @staticmethod
    def cat(parts: list[RawDetections]) -> RawDetections:
        with_masks = [p.masks for p in parts if p.masks is not None]
        if with_masks and len(with_masks) != len(parts):
            raise ValueError("cannot concatenate detections with and without masks")
        return RawDetections(
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.scores for p in parts]),
            torch.cat([p.labels for p in parts]),
            torch.cat(with_masks) if with_masks else None,
        )


def fit_token_slots(positive_map: torch.Tensor, slots: int) -> torch.Tensor:
    """A (K, T') positive map cut, or zero-padded, to a batch output's T token slots."""
    positive_map = positive_map[:, :slots]
    return torch.nn.functional.pad(positive_map, (0, slots - positive_map.shape[1]))


def legacy_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Per-label NMS with the legacy IoU (w = x2 - x1 + 1), suppressing IoU > threshold.

    boxes: (N, 4) legacy xyxy; scores: (N,); labels: (N,) int. Returns the kept indices (K,) int64
    in descending-score order; equal scores by label, then by index (torchvision's CPU `nms` sorts
    stably: of two boxes of one label and equal scores, the earlier index suppresses the later)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    # Not torchvision.ops.batched_nms, which tests/processing/test_postprocess.py compares with this
    # loop (torchvision 0.29): (1) its tie order differs (index order up to 1000 boxes on CPU / 25000
    # on GPU, an unstable sort above), and ties are common (equal token scores, duplicate candidates);
    # (2) up to that size it runs one NMS on boxes shifted by label × (max coordinate + 1), which in
    # float32 rounds fractional coordinates (0.125 px steps at 1e6: label 1000 of a 1333 px image)
    # and so keeps or drops other boxes near the threshold. One torchvision `nms` per label has
    # neither problem. torchvision's IoU of boxes grown by +1 at the far corner is the +1 IoU.
    grown = legacy_to_plain(boxes)
    kept = []
    for label in torch.unique(labels):
        index = torch.nonzero(labels == label).squeeze(1)
        kept.append(index[nms(grown[index], scores[index], iou_threshold)])
    keep = torch.cat(kept)
    order = torch.sort(scores[keep], descending=True, stable=True).indices
    return keep[order]


class PostProcessor:
    """Region–word logits + boxes -> per-image detections (official ATSS post-processing)."""

    def __init__(
        self,
        inference_threshold: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_threshold: float = 0.6,
        detections_per_image: int = 100,
        min_box_size: float = 0.0,
        one_label_per_box: bool = False,
    ) -> None:
        self.inference_threshold = inference_threshold
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        self.min_box_size = min_box_size
        # not official: after the per-label NMS, one more across labels, so that names sharing words
        # ("red circle", "red square") do not each keep a copy of the same box
        self.one_label_per_box = one_label_per_box

    @classmethod
    def from_config(cls, config: GLIPv2Config, **overrides: float | bool) -> PostProcessor:
        kwargs: dict[str, float | bool] = {
            "inference_threshold": config.inference_threshold,
            "pre_nms_top_n": config.pre_nms_top_n,
            "nms_threshold": config.nms_threshold,
            "detections_per_image": config.detections_per_image,
        }
        kwargs.update(overrides)
        return cls(**kwargs)  # type: ignore[arg-type]

    def candidates(self, output: GLIPv2Output, index: int, positive_map: torch.Tensor) -> RawDetections:
        """Pre-NMS candidates of image `index` of a batch output, all levels concatenated.
        positive_map: (K, T') over the prompt's tokens; slots past T' (batch padding) count as negative."""
        h, w = (int(v) for v in output.image_sizes[index])
        positive_map = fit_token_slots(positive_map, output.logits[0].shape[2]).to(output.logits[0].device)
        parts = []
        for logits, deltas, centerness, anchors in zip(
            output.logits, output.box_regression, output.centerness, output.anchors
        ):
            token_probs = logits[index].sigmoid()  # (HW, T)
            scores = label_scores(token_probs, positive_map)
            is_candidate = scores > self.inference_threshold
            locations, labels = torch.nonzero(is_candidate, as_tuple=True)
            scores = scores * centerness[index].reshape(-1, 1).sigmoid()
            candidate_scores = scores[locations, labels]
            k = min(int(candidate_scores.numel()), self.pre_nms_top_n)
            top = torch.topk(candidate_scores, k, sorted=False)
            locations, labels = locations[top.indices], labels[top.indices]
            boxes = decode_boxes(deltas[index].reshape(4, -1).T[locations], anchors[locations])
            boxes = clip_to_image(boxes, (h, w))
            keep = (xyxy_to_xywh(boxes, legacy=True)[:, 2:] >= self.min_box_size).all(
                dim=1
            )  # remove_small_boxes
            parts.append(RawDetections(boxes[keep], top.values[keep].sqrt(), labels[keep]))
        return RawDetections.cat(parts)

    def select(self, candidates: RawDetections) -> RawDetections:
        """NMS per label (and across labels with `one_label_per_box`), then the `detections_per_image`
        best (ties at the cut all kept)."""
        kept = candidates.select(
            legacy_nms(candidates.boxes, candidates.scores, candidates.labels, self.nms_threshold)
        )
        if self.one_label_per_box:
            kept = kept.select(
                legacy_nms(kept.boxes, kept.scores, torch.zeros_like(kept.labels), self.nms_threshold)
            )
        n = len(kept)
        if n > self.detections_per_image > 0:
            cut = torch.kthvalue(kept.scores.cpu(), n - self.detections_per_image + 1).values.item()
            kept = kept.select(kept.scores >= cut)
        return kept

    def __call__(self, output: GLIPv2Output, positive_maps: list[torch.Tensor]) -> list[RawDetections]:
        """One (K_i, T) positive map per image of the batch -> detections per image."""
        if len(positive_maps) != output.logits[0].shape[0]:
            raise ValueError(f"{len(positive_maps)} positive maps for a batch of {output.logits[0].shape[0]}")
        return [self.select(self.candidates(output, i, pm)) for i, pm in enumerate(positive_maps)]
