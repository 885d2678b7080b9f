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
        shapes = [f.shape for f in visual]
        v = torch.cat([f.flatten(2) for f in visual], dim=2).transpose(1, 2)
        v = self.layer_norm_v(v)
        t = self.layer_norm_l(text)
        dv, dt = self.attn(v, t, text_mask)
        v = (v + self.gamma_v * dv).transpose(1, 2)
        t = t + self.gamma_l * dt
        out, start = [], 0
        for b, c, h, w in shapes:
            out.append(v[:, :, start : start + h * w].reshape(b, c, h, w))
            start += h * w
        return out, t
