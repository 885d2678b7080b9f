"""VL-DyHead: the deep-fusion tower and the dense prediction layers of GLIP / GLIPv2.

Each block is  [bi-directional cross-attention (fusion)] → [a BERT layer on the text side]
→ [DyConv on the image side].  The prediction layers then give, per pyramid level, the box
regression, the centerness and the region–word alignment logits S = O·Pᵀ (the paper's
"classification → matching"), where O are the fused region features and P the fused token
features projected into the region space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer

from .config import GLIPv2Config
from .dyconv import DyConv
from .fusion import CLAMP, BiAttentionBlock


class Scale(nn.Module):
    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([value]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def text_layer_config(config: GLIPv2Config) -> BertConfig:
    bert = BertConfig(**config.text_encoder)
    bert._attn_implementation = "sdpa"
    return bert


def extended_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 0/1 -> (B, 1, 1, T) additive mask, as BERT's `get_extended_attention_mask`."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class TextLayer(nn.Module):
    """One BERT layer on the text side of a head block (official `BertEncoderLayer`)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = BertLayer(config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.layer(hidden, extended_attention_mask(mask, hidden.dtype))
        return out[0] if isinstance(out, tuple) else out


class VLDyHeadBlock(nn.Module):
    def __init__(self, config: GLIPv2Config, index: int) -> None:
        super().__init__()
        c = config.head_channels
        channels_in = config.fpn_channels if index == 0 else c
        same = channels_in == c  # the official first block drops DCN/DyReLU/attention if widths differ
        self.fusion: BiAttentionBlock | None = None
        self.text_layer: TextLayer | None = None
        if config.early_fusion:
            self.fusion = BiAttentionBlock(c, config.text_hidden_size, config.fusion_embed_dim,
                                           config.fusion_num_heads, config.fusion_dropout,
                                           init_values=1.0 / config.num_head_blocks)
            last = index == config.num_head_blocks - 1
            if not last or config.fused_dot_product:
                self.text_layer = TextLayer(text_layer_config(config))
        self.dyconv = DyConv(channels_in, c, config.group_norm_groups,
                             deformable=config.use_deformable_conv and same,
                             dyrelu=config.use_dyrelu and same,
                             scale_attention=config.use_scale_attention and same,
                             deformable_impl=config.deformable_conv_impl)

    def forward(self, visual: list[torch.Tensor], text: torch.Tensor,
                text_mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self.fusion is not None:
            visual, text = self.fusion(visual, text, text_mask)
        if self.text_layer is not None:
            text = self.text_layer(text, text_mask)
        return self.dyconv(visual), text


@dataclass
class HeadOutput:
    logits: list[torch.Tensor]  # per level (B, H·W, T): S = O·Pᵀ
    box_regression: list[torch.Tensor]  # per level (B, 4, H, W), after the per-level scale
    centerness: list[torch.Tensor]  # per level (B, 1, H, W) logits
    fused_visual: list[torch.Tensor]  # O: per level (B, C, H, W)
    fused_text: torch.Tensor  # P before projection: (B, T, D) text features after the tower
    token_embeddings: torch.Tensor  # (B, T, C): the projected, normalised P used in S
    legacy_cls_logits: list[torch.Tensor] | None


class VLDyHead(nn.Module):
    def __init__(self, config: GLIPv2Config) -> None:
        super().__init__()
        self.config = config
        c, d = config.head_channels, config.text_hidden_size
        self.blocks = nn.ModuleList(VLDyHeadBlock(config, i) for i in range(config.num_head_blocks))
        self.legacy_cls_logits = nn.Conv2d(c, config.legacy_num_classes, 1)  # official, unused
        self.bbox_pred = nn.Conv2d(c, 4, 1)
        self.centerness = nn.Conv2d(c, 1, 1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(config.num_levels))
        self.token_projection = nn.Linear(d, c)
        self.log_scale = nn.Parameter(torch.tensor([config.log_scale_init]))
        self.bias_lang = nn.Parameter(torch.zeros(d))
        prior_bias = -math.log((1 - config.prior_prob) / config.prior_prob)
        self.bias0 = nn.Parameter(torch.tensor([prior_bias]))
        for conv in (self.legacy_cls_logits, self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.legacy_cls_logits.bias, prior_bias)

    def forward(self, visual: list[torch.Tensor], text_hidden: torch.Tensor, text_embedded: torch.Tensor,
                text_mask: torch.Tensor, return_legacy_logits: bool = False) -> HeadOutput:
        """visual: O̊, per level (B, C, H, W); text_hidden: P̊ (B, T, D), fed to the fusion;
        text_embedded: (B, T, D) with pads zeroed, the token side of S when `fused_dot_product`
        is off (GLIP-T A); text_mask: (B, T) 1 for real tokens."""
        text = text_hidden
        recompute = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # trade compute for activation memory, as official DYHEAD.USE_CHECKPOINT
                visual, text = checkpoint(block, visual, text, text_mask, use_reentrant=False)
            else:
                visual, text = block(visual, text, text_mask)
        fused_text = text
        tokens = text if self.config.fused_dot_product else text_embedded
        tokens = F.normalize(tokens, p=2, dim=-1)
        token_embeddings = self.token_projection(tokens / 2.0)  # (B, T, C)
        token_bias = tokens @ self.bias_lang + self.bias0  # (B, T)
        temperature = self.log_scale.exp()

        logits, box_regression, centerness = [], [], []
        for level, x in enumerate(visual):
            regions = x.flatten(2).transpose(1, 2)  # (B, H·W, C)
            s = regions @ token_embeddings.transpose(1, 2) / temperature + token_bias.unsqueeze(1)
            logits.append(s.clamp(-CLAMP, CLAMP))
            box_regression.append(self.scales[level](self.bbox_pred(x)))
            centerness.append(self.centerness(x))
        legacy = [self.legacy_cls_logits(x) for x in visual] if return_legacy_logits else None
        return HeadOutput(logits, box_regression, centerness, visual, fused_text, token_embeddings, legacy)
