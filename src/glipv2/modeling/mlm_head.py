"""BERT-style language-modelling head on the fused token features P (for L_mlm)."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from .config import GLIPv2Config


class MLMHead(nn.Module):
    """dense → activation → LayerNorm → vocabulary projection (official `rpn.head.mlm_head`)."""

    def __init__(self, config: GLIPv2Config) -> None:
        super().__init__()
        text = config.text_encoder
        d = int(text["hidden_size"])
        self.transform = nn.Sequential()
        self.transform.add_module("dense", nn.Linear(d, d))
        self.transform.add_module("act", ACT2FN[text.get("hidden_act", "gelu")])
        self.transform.add_module("LayerNorm", nn.LayerNorm(d, eps=float(text.get("layer_norm_eps", 1e-12))))
        self.decoder = nn.Linear(d, int(text["vocab_size"]), bias=False)
        self.bias = nn.Parameter(torch.zeros(int(text["vocab_size"])))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) fused token features -> (B, T, vocab) logits."""
        return self.decoder(self.transform(tokens)) + self.bias
