"""Typed outputs of the GLIPv2 network: the core's features and the heads' predictions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class CoreOutput:
    """What the core (backbone → FPN → text encoder → fusion tower) gives every task head.

    Per-level lists run over P3..P7; T is the number of token slots (256 when padded as official).

    region_features:       O̊, per level (B, C, H, W): pre-fusion FPN features
    token_features:        P̊, (B, T, D): pre-fusion text-encoder features (pads not zeroed; with the
                           prompt-tuning offset when the model has one)
    token_embedded:        (B, T, D) P̊ with pads zeroed (the token side of S without fusion, GLIP-T A)
    fused_region_features: O, per level (B, C, H, W): the tower's image output
    fused_token_features:  P, (B, T, D): the tower's text output
    text_attention_mask:   (B, T) 1 for real tokens
    image_sizes:           (B, 2) unpadded (height, width) of each image in the batch
    """

    region_features: list[torch.Tensor]
    token_features: torch.Tensor
    token_embedded: torch.Tensor
    fused_region_features: list[torch.Tensor]
    fused_token_features: torch.Tensor
    text_attention_mask: torch.Tensor
    image_sizes: torch.Tensor


@dataclass
class GLIPv2Output:
    """The core's features and every head's outputs: what the post-processor, the losses and the
    task heads read.

    From the core (see `CoreOutput`): region_features (O̊), token_features (P̊),
    fused_region_features (O), fused_token_features (P), text_attention_mask, image_sizes.

    From the grounding head (None when it did not run):
    logits:            per level (B, H·W, T) region–word alignment logits S = O·Pᵀ (all slots, pads too)
    box_regression:    per level (B, 4, H, W) box deltas (after the per-level scale)
    centerness:        per level (B, 1, H, W) centerness logits
    anchors:           per level (H·W, 4) xyxy anchors in padded-input pixels
    token_embeddings:  (B, T, C) the normalised, projected tokens that S is computed with
    legacy_cls_logits: per level (B, 80, H, W) of the unused classic classifier, on request

    From the other heads, when they ran:
    mlm_logits:        (B, T, vocab) of the MLM head (training, or `return_mlm_logits=True`)
    mask_logits:       per image (N_i, M, M) mask logits of the boxes given to the forward
    vqa_logits:        (B, A) answer logits of the VQA head (`heads=["vqa"]`)
    caption_logits:    (B, T, vocab) next-token logits of the caption head (`heads=["caption"]`)
    extra:             outputs of heads registered outside glipv2, by output name
    """

    region_features: list[torch.Tensor]
    token_features: torch.Tensor
    fused_region_features: list[torch.Tensor]
    fused_token_features: torch.Tensor
    text_attention_mask: torch.Tensor
    image_sizes: torch.Tensor
    logits: list[torch.Tensor] | None = None
    box_regression: list[torch.Tensor] | None = None
    centerness: list[torch.Tensor] | None = None
    anchors: list[torch.Tensor] | None = None
    token_embeddings: torch.Tensor | None = None
    legacy_cls_logits: list[torch.Tensor] | None = None
    mlm_logits: torch.Tensor | None = None
    mask_logits: list[torch.Tensor] | None = None
    vqa_logits: torch.Tensor | None = None
    caption_logits: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
