"""The language-aware mask head of GLIPv2 (instance and referring-expression segmentation).

A Mask R-CNN mask branch on the *fused* region features O: RoIAlign from P3.. at 14x14, a stack
of 3x3 convolutions, a 2x up-sampling to 28x28. As in the official `VLMaskRCNNC4Predictor`, the
mask is not one channel per class but a per-pixel alignment with the fused token features P,
`<x(u, v), W·(P̂_t / 2) + w_0> / exp(log_scale) + P̂_t·b` with P̂ the L2-normalised P, so that a mask can be
asked for any phrase. The mask of a phrase is the mean of the logits of its tokens (official loss: the
mean over the token channels of the box's phrase); as the logits are linear in P̂_t, that mean is
computed once per box from the averaged token projection instead of materialising all T token
channels (so the official clamp at ±50000 applies to the mean, not to each token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MultiScaleRoIAlign, roi_align

from .base import HeadInputs, LossConfig, LossContext, Targets, TaskHead, fit_slots

if TYPE_CHECKING:
    from ..config import GLIPv2Config
    from ..outputs import CoreOutput, GLIPv2Output

# official clamp of the mask logits "for stability"
LOGIT_CLAMP = 50000.0


class LanguageAwareMaskHead(TaskHead):
    """Mask logits for boxes, each conditioned on the tokens of its phrase, and L_mask.

    As a head, `forward` runs when the call gives `mask_boxes` and `mask_token_weights` (per image
    (N_i, 4) and (N_i, T)), and in training on the ground-truth boxes of the images whose targets
    have `masks` (the official head sees the detector's proposals that match a ground truth; a
    one-stage detector has no proposal stage to share) -> `mask_logits`.

    predict(features, boxes, tokens, token_weights):
        features:      the fused O per level, (B, C, H_l, W_l), P3 first (only the first
                       `mask_pooler_levels` are read)
        boxes:         per image (N_i, 4) xyxy boxes in padded-input pixels
        tokens:        (B, T, D) fused token features P
        token_weights: per image (N_i, T) how much each token counts for box i's phrase, e.g. the
                       phrase's positive map; rows are normalised to sum 1 (mean over tokens)
    returns per image (N_i, M, M) mask logits inside each box, M = 2 · mask_pooler_resolution.
    """

    name = "mask"
    loss_key = "mask"
    options = ("mask_boxes", "mask_token_weights")

    def __init__(self, config: GLIPv2Config) -> None:
        super().__init__()
        self.levels = config.mask_pooler_levels
        self.first_stride = config.anchor_strides[0]
        self.pooler = MultiScaleRoIAlign(
            [str(i) for i in range(self.levels)], config.mask_pooler_resolution, config.mask_sampling_ratio
        )
        channels = config.mask_head_channels
        layers: list[nn.Module] = []
        in_channels = config.head_channels
        for _ in range(config.mask_head_convs):
            layers += [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
            in_channels = channels
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.token_projection = nn.Linear(config.text_hidden_size, channels)
        self.bias_lang = nn.Parameter(torch.zeros(config.text_hidden_size))
        self.log_scale = nn.Parameter(torch.full((1,), float(config.log_scale_init)))
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                # official MSRAFill for every weight of the mask branch, zero biases
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def wanted(self, inputs: HeadInputs) -> bool:
        return inputs.get("mask_boxes") is not None or (inputs.training and inputs.targets is not None)

    def forward(self, core: CoreOutput, inputs: HeadInputs) -> dict[str, Any]:
        boxes, weights = inputs.get("mask_boxes"), inputs.get("mask_token_weights")
        if boxes is None:  # training: the ground-truth boxes of the images that have instance masks
            targets = inputs.targets or []
            boxes = [t["boxes"] if "masks" in t else t["boxes"][:0] for t in targets]
            weights = [t["positive_map"] if "masks" in t else t["positive_map"][:0] for t in targets]
        elif weights is None:
            raise ValueError("mask_boxes needs mask_token_weights (the tokens of each box's phrase)")
        slots = core.fused_token_features.shape[1]
        weights = [
            fit_slots(
                torch.as_tensor(w, device=core.fused_token_features.device).float(),
                slots,
                0.0,
                "mask_token_weights",
            )
            for w in weights
        ]
        return {
            "mask_logits": self.predict(core.fused_region_features, boxes, core.fused_token_features, weights)
        }

    def predict(
        self,
        features: Sequence[torch.Tensor],
        boxes: Sequence[torch.Tensor],
        tokens: torch.Tensor,
        token_weights: Sequence[torch.Tensor],
    ) -> list[torch.Tensor]:
        batch, num_tokens = tokens.shape[:2]
        if len(boxes) != batch or len(token_weights) != batch:
            raise ValueError(
                f"{len(boxes)} box sets and {len(token_weights)} token-weight sets for a batch of "
                f"{batch} images"
            )
        for i, (b, w) in enumerate(zip(boxes, token_weights)):
            if b.ndim != 2 or b.shape[1] != 4 or w.shape != (b.shape[0], num_tokens):
                raise ValueError(
                    f"image {i}: boxes must be (N, 4) and token_weights (N, T={num_tokens}), got "
                    f"{tuple(b.shape)} and {tuple(w.shape)}"
                )
        counts = [int(b.shape[0]) for b in boxes]
        # the padded input size, from which the pooler infers each level's scale
        size = (features[0].shape[-2] * self.first_stride, features[0].shape[-1] * self.first_stride)
        levels = {str(i): f for i, f in enumerate(features[: self.levels])}
        pooled = self.pooler(levels, [b.to(features[0].dtype) for b in boxes], [size] * batch)  # (R, C, S, S)
        x = F.relu(self.upsample(self.convs(pooled)))  # (R, ch, M, M)

        embedded = F.normalize(tokens, p=2, dim=-1)
        projected = self.token_projection(embedded / 2.0)  # (B, T, ch)
        bias = embedded @ self.bias_lang  # (B, T)
        weights = [w.to(projected.dtype) / w.sum(dim=1, keepdim=True).clamp(min=1e-6) for w in token_weights]
        phrase = torch.cat([w @ projected[i] for i, w in enumerate(weights)])  # (R, ch)
        phrase_bias = torch.cat([w @ bias[i] for i, w in enumerate(weights)])  # (R,)
        logits = torch.einsum("rchw,rc->rhw", x, phrase) / self.log_scale.exp() + phrase_bias[:, None, None]
        return list(logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP).split(counts))

    # --- L_mask ----------------------------------------------------------------------------------
    def unweighted_loss(self, output: GLIPv2Output, targets: Targets, context: LossContext) -> torch.Tensor:
        return self.loss_mask(output.mask_logits, targets)

    def prepare_target(
        self,
        target: dict[str, Any],
        prepared: dict[str, torch.Tensor],
        num_tokens: int,
        config: LossConfig,
        index: int,
    ) -> None:
        if not self.loss_active(config) or "masks" not in target:
            return
        masks = torch.as_tensor(target["masks"], device=prepared["boxes"].device)
        num_boxes = prepared["boxes"].shape[0]
        if masks.ndim != 3 or masks.shape[0] != num_boxes:
            raise ValueError(f"target {index}: masks must be (N={num_boxes}, h, w), got {tuple(masks.shape)}")
        prepared["masks"] = masks

    @staticmethod
    def loss_mask(
        mask_logits: Sequence[torch.Tensor] | None, targets: Sequence[dict[str, torch.Tensor]]
    ) -> torch.Tensor:
        """L_mask, unweighted: binary cross-entropy of each ground-truth box's phrase mask logits
        (N_i, M, M) — computed by the model on the ground-truth boxes — against its instance mask
        cut out along the box and resampled to M x M (RoIAlign, as official `project_masks_on_boxes`),
        averaged over every pixel of every box of this rank. Images without `masks` are left out."""
        if mask_logits is None:
            raise ValueError(
                "use_mask needs output.mask_logits: a model with a mask head, called with mask_boxes "
                "and mask_token_weights"
            )
        if len(mask_logits) != len(targets):
            raise ValueError(f"{len(mask_logits)} mask-logit sets for {len(targets)} targets")
        predicted, wanted = [], []
        for index, (logits, target) in enumerate(zip(mask_logits, targets)):
            if "masks" not in target or logits.shape[0] == 0:
                continue
            boxes = target["boxes"]
            if logits.shape[0] != boxes.shape[0]:
                raise ValueError(
                    f"target {index}: mask logits of {logits.shape[0]} boxes for {boxes.shape[0]} boxes"
                )
            size = logits.shape[-1]
            rois = torch.cat(
                [torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1
            )
            wanted.append(
                roi_align(
                    target["masks"][:, None].float(), rois, (size, size), spatial_scale=1.0, sampling_ratio=2
                )[:, 0]
            )
            predicted.append(logits.float())
        if not predicted:
            return torch.stack([m.sum() for m in mask_logits]).sum() * 0.0 if mask_logits else torch.zeros(())
        return F.binary_cross_entropy_with_logits(torch.cat(predicted), torch.cat(wanted))
