"""The GLIPv2 core: backbone → FPN → text encoder → fusion tower, giving O̊, P̊, O and P.

Every task head reads the core's output (`CoreOutput`); the core knows nothing of boxes, masks or
words, so a head that needs only the fused features (a caption decoding step) runs the core alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import build_backbone
from .config import GLIPv2Config
from .fpn import FPN
from .fusion_tower import FusionTower
from .outputs import CoreOutput
from .text_encoder import TextEncoder, TextFeatures


class GLIPv2Core(nn.Module):
    """backbone, fpn, text_encoder, the prompt-tuning table and the fusion tower."""

    def __init__(self, config: GLIPv2Config, load_text_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config)
        self.fpn = FPN(
            self.backbone.out_channels,
            config.fpn_channels,
            config.fpn_drop_block_prob,
            config.fpn_drop_block_size,
        )
        self.text_encoder = TextEncoder(
            config.text_encoder, config.text_weights if load_text_weights else None
        )
        # prompt tuning (official ADD_LINEAR_LAYER / language_prompt_v2): a zero-initialised
        # per-position offset added to P̊, the only tensor that trains in that mode
        self.prompt_embedding = (
            nn.Parameter(torch.zeros(config.prompt_embedding_rows, config.text_hidden_size))
            if config.prompt_embedding_rows
            else None
        )
        self.fusion = FusionTower(config)
        # padded token slots never reach a real output (every attention masks them as keys, and
        # a token's own update reads only itself and the image), so the text encoder and the tower
        # can skip the trailing pads and hand back zeros in their slots
        self.trim_text_padding = config.trim_text_padding

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False
    ) -> TextFeatures:
        """P̊ before the prompt offset: the text encoder's features; cacheable across images that
        share a prompt. input_ids, attention_mask: (B, T); causal: left-to-right (captioning).
        With `trim_text_padding` the trailing pad slots (pads in every prompt of the batch) are
        not computed: their features are zero."""
        check_text(input_ids, attention_mask, self.config.max_query_len)
        slots = input_ids.shape[1]
        length = real_length(attention_mask) if self.trim_text_padding else slots
        features = self.text_encoder(input_ids[:, :length], attention_mask[:, :length], causal=causal)
        if length == slots:
            return features
        return TextFeatures(
            hidden=pad_tokens(features.hidden, slots),
            embedded=pad_tokens(features.embedded, slots),
            mask=attention_mask,
            causal=causal,
        )

    def prompt_offset(self, hidden: torch.Tensor) -> torch.Tensor:
        """P̊ with the prompt-tuning offset added (unchanged without one)."""
        if self.prompt_embedding is None:
            return hidden
        return hidden + self.prompt_embedding[: hidden.shape[1]].unsqueeze(0)

    def encode_images(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """O̊: (B, 3, H, W) normalised images -> FPN levels P3..P7, each (B, C, H_l, W_l)."""
        return self.fpn(self.backbone(pixel_values))

    def forward(
        self,
        pixel_values: torch.Tensor,
        text_features: TextFeatures,
        image_sizes: torch.Tensor,
        region_features: list[torch.Tensor] | None = None,
    ) -> CoreOutput:
        """pixel_values: (B, 3, H, W); text_features: P̊ for B prompts; image_sizes: (B, 2);
        region_features: O̊ from an earlier `encode_images` of the same images (reused across
        decoding steps), else computed here."""
        if region_features is None:
            region_features = self.encode_images(pixel_values)
        hidden, mask = self.prompt_offset(text_features.hidden), text_features.mask
        embedded = self.prompt_offset(text_features.embedded)
        slots = hidden.shape[1]
        length = real_length(mask) if self.trim_text_padding else slots
        fused_visual, fused_text = self.fusion(
            region_features, hidden[:, :length], mask[:, :length], causal=text_features.causal
        )
        fused_text = pad_tokens(fused_text, slots)
        return CoreOutput(
            region_features=region_features,
            token_features=hidden,
            token_embedded=embedded,
            fused_region_features=fused_visual,
            fused_token_features=fused_text,
            text_attention_mask=mask,
            image_sizes=image_sizes,
        )


def real_length(attention_mask: torch.Tensor) -> int:
    """(B, T) 0/1 -> the number of leading slots that hold a real token of some prompt."""
    used = attention_mask.bool().any(dim=0).nonzero()
    return int(used[-1]) + 1 if used.numel() else attention_mask.shape[1]


def pad_tokens(features: torch.Tensor, slots: int) -> torch.Tensor:
    """(B, T', D) -> (B, slots, D) with zeros in the added (pad) slots; unchanged when T' = slots."""
    missing = slots - features.shape[1]
    return features if missing == 0 else F.pad(features, (0, 0, 0, missing))


def check_text(input_ids: torch.Tensor, attention_mask: torch.Tensor, max_len: int) -> None:
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids and attention_mask must both be (B, T), got {tuple(input_ids.shape)} and "
            f"{tuple(attention_mask.shape)}"
        )
    if input_ids.is_floating_point():
        raise ValueError(f"input_ids must be integer token ids, got {input_ids.dtype}")
    if input_ids.shape[1] > max_len:
        raise ValueError(
            f"prompt has {input_ids.shape[1]} tokens, more than max_query_len={max_len}; "
            "split long vocabularies into chunks"
        )
    if input_ids.shape[1] == 0 or bool((attention_mask.sum(dim=1) == 0).any()):
        raise ValueError("empty text: every prompt needs at least one token")
