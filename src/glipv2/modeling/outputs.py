"""Typed outputs of the GLIPv2 network."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GLIPv2Output:
    """Everything the post-processor, the GLIPv2 losses and the task heads need.

    Per-level lists run over P3..P7; T is the number of token slots (256 when padded as official).

    logits:            per level (B, H·W, T) region–word alignment logits S = O·Pᵀ (all slots, pads too)
    box_regression:    per level (B, 4, H, W) box deltas (after the per-level scale)
    centerness:        per level (B, 1, H, W) centerness logits
    anchors:           per level (H·W, 4) xyxy anchors in padded-input pixels
    region_features:   O̊, per level (B, C, H, W): pre-fusion FPN features
    token_features:    P̊, (B, T, D): pre-fusion text-encoder features (pads not zeroed)
    fused_region_features: O, per level (B, C, H, W): the tower's image output
    fused_token_features:  P, (B, T, D): the tower's text output
    token_embeddings:  (B, T, C) the normalised, projected tokens that S is computed with
    text_attention_mask: (B, T) 1 for real tokens
    image_sizes:       (B, 2) unpadded (height, width) of each image in the batch
    mlm_logits:        (B, T, vocab) when the model has an MLM head, else None
    legacy_cls_logits: per level (B, 80, H, W) of the unused classic classifier, on request
    mask_logits:       per image (N_i, M, M) mask logits of the boxes given to the forward, else None
    """

    logits: list[torch.Tensor]
    box_regression: list[torch.Tensor]
    centerness: list[torch.Tensor]
    anchors: list[torch.Tensor]
    region_features: list[torch.Tensor]
    token_features: torch.Tensor
    fused_region_features: list[torch.Tensor]
    fused_token_features: torch.Tensor
    token_embeddings: torch.Tensor
    text_attention_mask: torch.Tensor
    image_sizes: torch.Tensor
    mlm_logits: torch.Tensor | None = None
    legacy_cls_logits: list[torch.Tensor] | None = None
    mask_logits: list[torch.Tensor] | None = None
