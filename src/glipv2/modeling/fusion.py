"""Deep fusion: GLIP's bi-directional image↔text cross-attention (`VLFuse`, type MHA-B).

One score matrix S = (W_q O)(W_k P)ᵀ per head serves both directions: softmax over tokens
(pads masked) updates the image features, softmax of Sᵀ over *all* image positions of all
levels (padded pixels included, as official) updates the token features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Official clamps (fp16 safety); kept so that extreme logits behave identically.
CLAMP = 50000.0


class BiMultiHeadAttention(nn.Module):
    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for lin in (
            self.v_proj,
            self.l_proj,
            self.values_v_proj,
            self.values_l_proj,
            self.out_v_proj,
            self.out_l_proj,
        ):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)

    def image_side(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image half of the attention, (B, N, Cv) -> queries and values, each (B, h, N, d): all
        a token update needs from the image, cacheable while the text changes (caption decoding)."""
        return self._heads(self.v_proj(v) * self.scale), self._heads(self.values_v_proj(v))

    def text_update(self, queries: torch.Tensor, values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """dL (B, T, Cl) from the image side of `image_side` and text tokens t (B, T, Cl): each token
        attends over all image positions — the same formula as in `forward`."""
        b, length = t.shape[:2]
        scores = (queries @ self._heads(self.l_proj(t)).transpose(-1, -2)).clamp(-CLAMP, CLAMP)
        attn_l = scores.softmax(dim=2)
        if self.training and self.dropout > 0:
            attn_l = F.dropout(attn_l, self.dropout)
        out_l = (attn_l.transpose(-1, -2) @ values).transpose(1, 2).reshape(b, length, -1)
        return self.out_l_proj(out_l)

    def forward(
        self, v: torch.Tensor, t: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """v: (B, N, Cv) image tokens; t: (B, T, Cl) text tokens; text_mask: (B, T) 1 = real token.

        Returns the updates (dV (B, N, Cv), dL (B, T, Cl))."""
        b, n, _ = v.shape
        q = self._heads(self.v_proj(v) * self.scale)
        k = self._heads(self.l_proj(t))
        value_v = self._heads(self.values_v_proj(v))
        value_l = self._heads(self.values_l_proj(t))
        scores = (q @ k.transpose(-1, -2)).clamp(-CLAMP, CLAMP)  # (B, h, N, T)

        # image -> text: each token attends over all image positions (softmax over N in place of
        # a transposed copy of the (N, T) scores)
        attn_l = scores.softmax(dim=2)
        # text -> image: each image position attends over the real tokens only
        pad = (text_mask == 0)[:, None, None, :]
        attn_v = scores.masked_fill(pad, float("-inf")).softmax(dim=-1)
        if self.training and self.dropout > 0:
            attn_v = F.dropout(attn_v, self.dropout)
            attn_l = F.dropout(attn_l, self.dropout)
        out_v = (attn_v @ value_l).transpose(1, 2).reshape(b, n, -1)
        out_l = (attn_l.transpose(-1, -2) @ value_v).transpose(1, 2).reshape(b, t.shape[1], -1)
        return self.out_v_proj(out_v), self.out_l_proj(out_l)


class BiAttentionBlock(nn.Module):
    """Pre-LN bi-directional attention with layer scale. Note the official residual: the update is
    added to the *normalised* features (O' = LN(O) + γ_v·dO), not to the raw input."""

    def __init__(
        self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, dropout: float, init_values: float
    ) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads, dropout)
        self.gamma_v = nn.Parameter(torch.full((v_dim,), init_values))
        self.gamma_l = nn.Parameter(torch.full((l_dim,), init_values))

    def forward(
        self, visual: list[torch.Tensor], text: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """visual: per-level (B, C, H_l, W_l), flattened and concatenated into one sequence."""
        v = self.layer_norm_v(_flatten_levels(visual))
        t = self.layer_norm_l(text)
        dv, dt = self.attn(v, t, text_mask)
        return _split_levels(v + self.gamma_v * dv, visual), t + self.gamma_l * dt

    def image_only(self, visual: list[torch.Tensor]) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
        """The causal (caption) mode's image half: the image does not read the text — it would carry
        later caption tokens to earlier ones — so its update is zero; returns the block's image
        output and the attention's image side for `text_only` (cached across decoding steps)."""
        v = self.layer_norm_v(_flatten_levels(visual))
        return _split_levels(v, visual), self.attn.image_side(v)

    def text_only(self, image_side: tuple[torch.Tensor, ...], text: torch.Tensor) -> torch.Tensor:
        """The text half: tokens read the image (its `image_only` side) as in `forward`."""
        t = self.layer_norm_l(text)
        return t + self.gamma_l * self.attn.text_update(*image_side, t)


def _flatten_levels(visual: list[torch.Tensor]) -> torch.Tensor:
    """Per-level (B, C, H_l, W_l) -> one (B, N, C) sequence, P3 first."""
    return torch.cat([f.flatten(2) for f in visual], dim=2).transpose(1, 2)


def _split_levels(v: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """(B, N, C) -> per-level (B, C, H_l, W_l) shaped as `like`."""
    v = v.transpose(1, 2)
    out, start = [], 0
    for b, c, h, w in (f.shape for f in like):
        out.append(v[:, :, start : start + h * w].reshape(b, c, h, w))
        start += h * w
    return out
