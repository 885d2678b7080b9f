"""Deep fusion: GLIP's bi-directional image↔text cross-attention (`VLFuse`, type MHA-B).

One score matrix S = (W_q O)(W_k P)ᵀ per head serves both directions: softmax over tokens
(pads masked) updates the image features, softmax of Sᵀ over *all* image positions of all
levels (padded pixels included, as official) updates the token features.

Two ways to compute the same attention (`GLIPv2Config.fusion_attention`):

* "projected" (official order): the N image positions are projected to the 2048-wide queries and
  values, attend, and are projected back — three N × C_v × 2048 products per block on top of the
  three N × T × 2048 attention products.
* "folded": the image-side projections are folded into the text side, which has T ≤ 256 rows
  instead of N ≈ 22,000. Per head h (head width d, image width C_v):
    S_h   = (O W_qhᵀ + b_qh)·s K_hᵀ     = O (s W_qhᵀ K_hᵀ) + s b_qh K_hᵀ
    dO    = Σ_h A_h V_lh W_ohᵀ + b_o     = [A_1 … A_H] [V_l1 W_o1ᵀ; …] + b_o
    dP_h  = A'_hᵀ (O W_vhᵀ + b_vh)      = (A'_hᵀ O) W_vhᵀ + (A'_hᵀ 1) b_vhᵀ
  so each block costs three N × (H·T) × C_v products and nothing N × 2048 wide. With the official
  C_v · H = 2048 that removes the projections' half of the FLOPs and all N × 2048 buffers.
  "auto" picks whichever has fewer multiply-adds for the call's T (folded for every preset).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Official clamps (fp16 safety); kept so that extreme logits behave identically.
CLAMP = 50000.0
# 1024 positions × H·T ≤ 2048 columns: an 8 MiB score block, reused across the blocks of a call
# (measured on glip_t at 800×1333: 1024 beat 256, 512, 2048 and 4096)
INFERENCE_ROW_BLOCK = 1024


class BiMultiHeadAttention(nn.Module):
    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int,
        num_heads: int,
        dropout: float,
        attention: str = "auto",
    ) -> None:
        super().__init__()
        self.attention_impl = attention  # "auto" | "folded" | "projected", see the module docstring
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        # image positions per block of the gradient-free folded attention (`_attend_in_row_blocks`)
        self.row_block = INFERENCE_ROW_BLOCK
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

    def uses_folded(self, num_tokens: int) -> bool:
        """Whether this call runs folded: multiply-adds per image position, folded H·T·C_v per
        product against projected (C_v + T)·E (`E` = the embed width)."""
        if self.attention_impl != "auto":
            return self.attention_impl == "folded"
        v_dim = self.v_proj.in_features
        return self.num_heads * num_tokens * v_dim <= (v_dim + num_tokens) * self.v_proj.out_features

    def forward(
        self, v: torch.Tensor, t: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """v: (B, N, Cv) image tokens; t: (B, T, Cl) text tokens; text_mask: (B, T) 1 = real token.

        Returns the updates (dV (B, N, Cv), dL (B, T, Cl))."""
        if self.uses_folded(t.shape[1]):
            return self.forward_folded(v, t, text_mask)
        return self.forward_projected(v, t, text_mask)

    def forward_folded(
        self, v: torch.Tensor, t: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` with the image-side projections folded into the text side (module docstring)."""
        b, n, v_dim = v.shape
        length, heads, d = t.shape[1], self.num_heads, self.head_dim
        keys = self.l_proj(t).view(b, length, heads, d)
        values_l = self.values_l_proj(t).view(b, length, heads, d)
        # S = O·M + c, M (B, Cv, H·T): the queries' projection and scale folded into the keys
        w_q = self.v_proj.weight.view(heads, d, v_dim)
        folded_keys = torch.einsum("hdc,bthd->bcht", w_q, keys * self.scale).reshape(b, v_dim, heads * length)
        key_bias = torch.einsum("hd,bthd->bht", self.v_proj.bias.view(heads, d), keys * self.scale)
        # dO = [A_1 … A_H] · [V_l,h W_o,hᵀ]_h + b_o
        w_o = self.out_v_proj.weight.view(v_dim, heads, d)
        folded_values = torch.einsum("bthd,chd->bhtc", values_l, w_o).reshape(b, heads * length, v_dim)
        w_v = self.values_v_proj.weight.view(heads, d, v_dim)
        key_bias = key_bias.reshape(b, 1, heads * length)
        pads = (text_mask == 0)[:, None, None, :] if bool((text_mask == 0).any()) else None
        dropout = self.training and self.dropout > 0
        needs_grad = v.requires_grad or folded_keys.requires_grad or folded_values.requires_grad
        if not (dropout or needs_grad or key_bias.requires_grad):
            dv, pooled = self._attend_in_row_blocks(v, folded_keys, key_bias, folded_values, pads, length)
            bias_v = self.values_v_proj.bias.view(1, 1, heads, d)  # A'_h's columns sum to 1
            out_l = torch.einsum("bhtc,hdc->bthd", pooled.view(b, heads, length, v_dim), w_v) + bias_v
            return dv, self.out_l_proj(out_l.reshape(b, length, heads * d))

        per_head = torch.baddbmm(key_bias, v, folded_keys).clamp(-CLAMP, CLAMP).view(b, n, heads, length)
        attn_l = per_head.softmax(dim=1)  # image -> text: each token over all image positions
        if pads is not None:
            per_head = per_head.masked_fill(pads, float("-inf"))
        attn_v = per_head.softmax(dim=-1)  # text -> image: each position over the real tokens
        if dropout:
            attn_v = F.dropout(attn_v, self.dropout)
            attn_l = F.dropout(attn_l, self.dropout)
        dv = torch.baddbmm(self.out_v_proj.bias.view(1, 1, v_dim), attn_v.reshape(b, n, -1), folded_values)
        # dP_h = (A'_hᵀ O) W_v,hᵀ + (A'_hᵀ 1) b_v,h  (the column sums are 1 unless dropout ran)
        attn_l = attn_l.reshape(b, n, heads * length)
        pooled = (attn_l.transpose(1, 2) @ v).view(b, heads, length, v_dim)
        out_l = torch.einsum("bhtc,hdc->bthd", pooled, w_v) + torch.einsum(
            "bht,hd->bthd", attn_l.sum(dim=1).view(b, heads, length), self.values_v_proj.bias.view(heads, d)
        )
        return dv, self.out_l_proj(out_l.reshape(b, length, heads * d))

    def _attend_in_row_blocks(
        self,
        v: torch.Tensor,
        folded_keys: torch.Tensor,
        key_bias: torch.Tensor,
        folded_values: torch.Tensor,
        pads: torch.Tensor | None,
        length: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded attention without gradients, one pass over blocks of `row_block` image
        positions: no (N, H·T) score matrix is ever allocated (at 800×1333 it is 140 MB per
        softmax, and a fresh buffer of that size costs more in page faults than its arithmetic).

        Per block the text -> image softmax is complete (it runs over the tokens); the image -> text
        softmax runs over all N, so it is accumulated online: a running maximum per (head, token)
        and the sum and the pooled image features rescaled whenever that maximum grows — the same
        values as one softmax, summed in another order.

        v (B, N, Cv), folded_keys (B, Cv, H·T), key_bias (B, 1, H·T), folded_values (B, H·T, Cv),
        pads (B, 1, 1, T) or None. Returns dO (B, N, Cv) and the pooled A'ᵀO (B, H·T, Cv)."""
        b, n, v_dim = v.shape
        columns = folded_keys.shape[-1]
        heads = columns // length
        dv = v.new_empty(b, n, v_dim)
        pooled = v.new_zeros(b, columns, v_dim)
        total = v.new_zeros(b, 1, columns)
        running_max = v.new_full((b, 1, columns), float("-inf"))
        rows_per_block = min(self.row_block, n)
        scores_buffer = v.new_empty(b * rows_per_block * columns)
        exp_buffer = torch.empty_like(scores_buffer)
        out_bias = self.out_v_proj.bias.view(1, 1, v_dim)
        for start in range(0, n, rows_per_block):
            rows = v[:, start : start + rows_per_block]
            shape = (b, rows.shape[1], columns)
            scores = torch.baddbmm(
                key_bias, rows, folded_keys, out=scores_buffer[: shape[0] * shape[1] * columns].view(shape)
            )
            scores.clamp_(-CLAMP, CLAMP)
            # image -> text, online: rescale what the earlier blocks summed to the new maximum
            new_max = torch.maximum(running_max, scores.amax(dim=1, keepdim=True))
            rescale = (running_max - new_max).exp_()
            total.mul_(rescale)
            pooled.mul_(rescale.transpose(1, 2))
            weights = torch.sub(scores, new_max, out=exp_buffer[: scores.numel()].view(shape)).exp_()
            total.add_(weights.sum(dim=1, keepdim=True))
            # out of place (a 1.6 MB result): FlopCounterMode does not count the in-place baddbmm_
            pooled = torch.baddbmm(pooled, weights.transpose(1, 2), rows)
            running_max = new_max
            # text -> image, in place in the scores: each position over the real tokens
            per_head = scores.view(b, shape[1], heads, length)
            if pads is not None:
                per_head.masked_fill_(pads, float("-inf"))
            _softmax_(per_head.sub_(per_head.amax(dim=-1, keepdim=True)), dim=-1)
            dv[:, start : start + shape[1]] = torch.baddbmm(out_bias, scores, folded_values)
        return dv, pooled.div_(total.transpose(1, 2))

    def forward_projected(
        self, v: torch.Tensor, t: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` in the official order: project, split heads, attend, merge, project back."""
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
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int,
        num_heads: int,
        dropout: float,
        init_values: float,
        attention: str = "auto",
    ) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads, dropout, attention)
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


def _softmax_(shifted: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax of scores already shifted by their maximum along `dim`, computed in place."""
    shifted.exp_()
    return shifted.div_(shifted.sum(dim=dim, keepdim=True))


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
