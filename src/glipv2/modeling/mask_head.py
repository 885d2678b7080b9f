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

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MultiScaleRoIAlign

from .config import GLIPv2Config

# official clamp of the mask logits "for stability"
LOGIT_CLAMP = 50000.0


class LanguageAwareMaskHead(nn.Module):
    """Mask logits for boxes, each conditioned on the tokens of its phrase.

    forward(features, boxes, tokens, token_weights):
        features:      the fused O per level, (B, C, H_l, W_l), P3 first (only the first
                       `mask_pooler_levels` are read)
        boxes:         per image (N_i, 4) xyxy boxes in padded-input pixels
        tokens:        (B, T, D) fused token features P
        token_weights: per image (N_i, T) how much each token counts for box i's phrase, e.g. the
                       phrase's positive map; rows are normalised to sum 1 (mean over tokens)
    returns per image (N_i, M, M) mask logits inside each box, M = 2 · mask_pooler_resolution.
    """

    def __init__(self, config: GLIPv2Config) -> None:
        super().__init__()
        self.levels = config.mask_pooler_levels
        self.first_stride = config.anchor_strides[0]
        self.pooler = MultiScaleRoIAlign([str(i) for i in range(self.levels)], config.mask_pooler_resolution,
                                         config.mask_sampling_ratio)
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

    def forward(self, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor], tokens: torch.Tensor,
                token_weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        batch, num_tokens = tokens.shape[:2]
        if len(boxes) != batch or len(token_weights) != batch:
            raise ValueError(f"{len(boxes)} box sets and {len(token_weights)} token-weight sets for a batch of "
                             f"{batch} images")
        for i, (b, w) in enumerate(zip(boxes, token_weights)):
            if b.ndim != 2 or b.shape[1] != 4 or w.shape != (b.shape[0], num_tokens):
                raise ValueError(f"image {i}: boxes must be (N, 4) and token_weights (N, T={num_tokens}), got "
                                 f"{tuple(b.shape)} and {tuple(w.shape)}")
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
