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
from .text_encoder import causal_attention_mask

# Per block, the image side of its attention (queries, values: each (B, h, N, d)), or None for a
# block without fusion: all that the text stream of a causal (caption) run needs from the image.
ImageSides = list[tuple[torch.Tensor, ...] | None]


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

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """hidden (B, T, D); mask (B, T) 1 = real token; causal: token t attends to tokens <= t."""
        if causal:
            allowed = causal_attention_mask(mask)[:, None]  # (B, 1, T, T)
            additive = (~allowed).to(hidden.dtype) * torch.finfo(hidden.dtype).min
        else:
            additive = extended_attention_mask(mask, hidden.dtype)
        out = self.layer(hidden, additive)
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
                attention=config.fusion_attention,
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

    def image_only(
        self, visual: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...] | None]:
        """Causal mode, image half: the block's image output, which reads no text, and its side."""
        side = None
        if self.fusion is not None:
            visual, side = self.fusion.image_only(visual)
        return self.dyconv(visual), side

    def text_only(
        self, side: tuple[torch.Tensor, ...] | None, text: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """Causal mode, text half: tokens read the image side, then a causally masked BERT layer."""
        if self.fusion is not None and side is not None:
            text = self.fusion.text_only(side, text)
        if self.text_layer is not None:
            text = self.text_layer(text, text_mask, causal=True)
        return text


class FusionTower(nn.Module):
    """The stack of `VLDyHeadBlock`s: (O̊, P̊) -> (O, P)."""

    def __init__(self, config: GLIPv2Config) -> None:
        super().__init__()
        self.gradient_checkpointing = config.gradient_checkpointing
        self.blocks = nn.ModuleList(VLDyHeadBlock(config, i) for i in range(config.num_head_blocks))

    def forward(
        self, visual: list[torch.Tensor], text: torch.Tensor, text_mask: torch.Tensor, causal: bool = False
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """visual: O̊, per level (B, C, H, W); text: P̊ (B, T, D); text_mask: (B, T) 1 for real
        tokens -> (O per level (B, C', H, W), P (B, T, D)).

        causal (captioning): no information may flow from token t+1 to the outputs at <= t, so the
        text layers are causally masked and the image stream reads no text at all (image features
        that saw the whole caption would hand later tokens to earlier ones through the
        image -> text attention); O is then the image-only stream."""
        if causal:
            fused_visual, sides = self.image_stream(visual)
            return fused_visual, self.text_stream(sides, text, text_mask)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # trade compute for activation memory, as official DYHEAD.USE_CHECKPOINT
                visual, text = checkpoint(block, visual, text, text_mask, use_reentrant=False)
            else:
                visual, text = block(visual, text, text_mask)
        return visual, text

    def image_stream(self, visual: list[torch.Tensor]) -> tuple[list[torch.Tensor], ImageSides]:
        """Causal mode, image half of every block: O (text-independent) and each block's image side,
        computed once per image and reused by every decoding step."""
        sides: ImageSides = []
        for block in self.blocks:
            visual, side = block.image_only(visual)
            sides.append(side)
        return visual, sides

    def text_stream(self, sides: ImageSides, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Causal mode, text half of every block: P̊ (B, T, D) -> P, reading the cached image sides."""
        for block, side in zip(self.blocks, sides):
            text = block.text_only(side, text, text_mask)
        return text
