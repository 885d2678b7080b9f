"""Prompt tokenization with the official padding policy (all 256 slots unless configured off)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class TokenizedPrompts:
    """input_ids, attention_mask: (B, T); offsets: (B, T, 2) character spans ((0, 0) for special
    tokens and padding) — what phrase→token maps are built from."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    offsets: torch.Tensor


def tokenize_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_length: int = 256,
                     pad_to_max_length: bool = True) -> TokenizedPrompts:
    """Tokenize prompts as the official model does: [CLS] ... [SEP], truncated to `max_length`,
    padded to `max_length` (official `PAD_MAX`) or to the longest prompt of the batch."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt {i} is empty: every prompt needs some text")
    enc = tokenizer(list(prompts), max_length=max_length, truncation=True, return_offsets_mapping=True,
                    padding="max_length" if pad_to_max_length else "longest", return_tensors="pt")
    return TokenizedPrompts(enc["input_ids"], enc["attention_mask"], enc["offset_mapping"])
