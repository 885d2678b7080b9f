"""Token corruption for GLIPv2's masked-language-modelling loss L_mlm (BERT recipe), applied by the
collator (`GroundingCollator(mlm=...)`) so that the model and the trainer need no MLM step.

A fraction (15 %) of the real, non-special tokens is selected; of those 80 % become [MASK], 10 % a
random vocabulary token and 10 % stay unchanged. The labels hold the original id at the selected
positions and -100 (ignored by cross-entropy) everywhere else.

Unlike the official `random_word` (generalized_vl_rcnn.py), which skips only padding — so it may
mask [CLS] / [SEP] — and draws random replacements from the whole vocabulary, special tokens are
never selected here nor drawn as replacements. Its per-token Python loop is also replaced by
tensor operations (same distribution).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..modeling.heads.mlm import IGNORE_INDEX

MASK_FRACTION = 0.8  # of the selected tokens -> [MASK]
RANDOM_FRACTION = 0.1  # of the selected tokens -> a random token (the last 10 % stay unchanged)


@dataclass(frozen=True)
class MaskingVocab:
    """What masking needs to know about a vocabulary, when no tokenizer is at hand.

    mask_token_id: id of [MASK]; vocab_size: ids are 0..vocab_size-1; special_ids: never masked
    and never drawn as random replacements ([CLS], [SEP], [PAD], [MASK], [UNK], ...)."""

    mask_token_id: int
    vocab_size: int
    special_ids: tuple[int, ...] = ()

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> MaskingVocab:
        """From a Hugging Face tokenizer (needs a mask token, e.g. BERT's)."""
        if tokenizer.mask_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no mask token; MLM needs one")
        return cls(
            int(tokenizer.mask_token_id), len(tokenizer), tuple(int(i) for i in tokenizer.all_special_ids)
        )


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    tokenizer_or_ids: Any | MaskingVocab,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
    protected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt tokens for L_mlm.

    input_ids:       (B, T) long token ids
    attention_mask:  (B, T) 1 for real tokens (padding is never masked)
    tokenizer_or_ids: a Hugging Face tokenizer or a `MaskingVocab`
    probability:     fraction of the eligible tokens selected (BERT / official: 0.15)
    generator:       optional torch.Generator on input_ids' device, for reproducible masks
    protected:       optional (B, T) bool, tokens never masked (e.g. the phrase tokens of the
                     boxes, official greenlight map value -1)
    Returns (masked_ids, labels), both (B, T) long: a new corrupted copy of input_ids, and the
    original ids at the selected positions with -100 elsewhere.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must lie in [0, 1], got {probability}")
    if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
        raise ValueError(
            f"input_ids and attention_mask must both be (B, T), got {tuple(input_ids.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    vocab = (
        tokenizer_or_ids
        if isinstance(tokenizer_or_ids, MaskingVocab)
        else (MaskingVocab.from_tokenizer(tokenizer_or_ids))
    )
    device = input_ids.device
    special = torch.tensor(
        sorted(set(vocab.special_ids) | {vocab.mask_token_id}), dtype=torch.long, device=device
    )

    eligible = attention_mask.bool() & ~torch.isin(input_ids, special)
    if protected is not None:
        if protected.shape != input_ids.shape:
            raise ValueError(f"protected must be {tuple(input_ids.shape)}, got {tuple(protected.shape)}")
        eligible &= ~protected.to(device=device, dtype=torch.bool)

    selected = eligible & (_uniform(input_ids.shape, generator, device) < probability)
    action = _uniform(input_ids.shape, generator, device)  # which of the 80/10/10 cases
    to_mask = selected & (action < MASK_FRACTION)
    to_random = selected & (action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION)

    masked = input_ids.clone()
    masked[to_mask] = vocab.mask_token_id
    # random replacements come from the ordinary (non-special) vocabulary
    ordinary = _ordinary_ids(vocab.vocab_size, special)
    picks = torch.randint(len(ordinary), input_ids.shape, generator=generator, device=device)
    masked[to_random] = ordinary[picks[to_random]]

    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


def _uniform(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=generator, device=device)


def _ordinary_ids(vocab_size: int, special: torch.Tensor) -> torch.Tensor:
    ids = torch.arange(vocab_size, device=special.device)
    return ids[~torch.isin(ids, special)]
