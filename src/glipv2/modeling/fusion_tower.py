"""VL-DyHead's deep-fusion tower: the part of GLIP / GLIPv2 where image and text cross-attend.

Each block is  [bi-directional cross-attention (fusion)] → [a BERT layer on the text side]
→ [DyConv on the image side].  The tower turns the pre-fusion O̊ (FPN levels) and P̊ (text
encoder) into the fused O and P that every task head reads; the dense box / alignment layers that
used to close the official head are the grounding head (`heads/grounding.py`), so the tower runs
without them (a caption decoding step does not pay for box prediction).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer

from .config import GLIPv2Config
from .dyconv import DyConv
from .fusion import BiAttentionBlock


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
            self.fusion = BiAttentionBlock(
                c,
                config.text_hidden_size,
                config.fusion_embed_dim,
                config.fusion_num_heads,
                config.fusion_dropout,
                init_values=1.0 / config.num_head_blocks,
            )
            last = index == config.num_head_blocks - 1
            if not last or config.fused_dot_product:
                self.text_layer = TextLayer(text_layer_config(config))
        self.dyconv = DyConv(
            channels_in,
            c,
            config.group_norm_groups,
            deformable=config.use_deformable_conv and same,
            dyrelu=config.use_dyrelu and same,
            scale_attention=config.use_scale_attention and same,
            deformable_impl=config.deformable_conv_impl,
        )

    def forward(
        self, visual: list[torch.Tensor], text: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self.fusion is not None:
            visual, text = self.fusion(visual, text, text_mask)
        if self.text_layer is not None:
            text = self.text_layer(text, text_mask)
        return self.dyconv(visual), text


class FusionTower(nn.Module):
    """The stack of `VLDyHeadBlock`s: (O̊, P̊) -> (O, P)."""

    def __init__(self, config: GLIPv2Config) -> None:
        super().__init__()
        self.gradient_checkpointing = config.gradient_checkpointing
        self.blocks = nn.ModuleList(VLDyHeadBlock(config, i) for i in range(config.num_head_blocks))

    def forward(
        self, visual: list[torch.Tensor], text: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """visual: O̊, per level (B, C, H, W); text: P̊ (B, T, D); text_mask: (B, T) 1 for real
        tokens -> (O per level (B, C', H, W), P (B, T, D))."""
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # trade compute for activation memory, as official DYHEAD.USE_CHECKPOINT
                visual, text = checkpoint(block, visual, text, text_mask, use_reentrant=False)
            else:
                visual, text = block(visual, text, text_mask)
        return visual, text
