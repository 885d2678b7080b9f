"""MLM token corruption: the 15 % / 80-10-10 ratios on a large batch (statistical bounds), special
and padding tokens never touched, protected tokens respected, labels, reproducibility."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from glipv2.data.mlm import MaskingVocab, mask_tokens

VOCAB = MaskingVocab(mask_token_id=103, vocab_size=1000, special_ids=(0, 100, 101, 102, 103))
CLS, SEP, PAD = 101, 102, 0


def batch(rows: int = 512, length: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] words [SEP] [PAD]..., words drawn from the ordinary ids 200..999, random lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(200, 1000, (rows, length), generator=g)
    lengths = torch.randint(10, length + 1, (rows,), generator=g)
    pos = torch.arange(length)[None, :]
    mask = (pos < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(rows), lengths - 1] = SEP
    ids[mask == 0] = PAD
    return ids, mask


def within(count: int, total: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - total * p) <= sigmas * math.sqrt(total * p * (1 - p))


def test_ratios_on_a_large_batch() -> None:
    ids, mask = batch()
    masked, labels = mask_tokens(ids, mask, VOCAB, generator=torch.Generator().manual_seed(1))
    eligible = (mask == 1) & (ids != CLS) & (ids != SEP)
    selected = labels != -100
    n_eligible, n_selected = int(eligible.sum()), int(selected.sum())
    assert n_eligible > 20000
    assert within(n_selected, n_eligible, 0.15), n_selected / n_eligible

    to_mask = selected & (masked == VOCAB.mask_token_id)
    unchanged = selected & (masked == ids)
    replaced = selected & (masked != ids) & (masked != VOCAB.mask_token_id)
    assert within(int(to_mask.sum()), n_selected, 0.8)
    # a random replacement equals the original with probability 1/795: counted as unchanged
    assert within(int(replaced.sum()), n_selected, 0.1 * (1 - 1 / 795))
    assert within(int(unchanged.sum()), n_selected, 0.1 + 0.1 / 795)
    # labels hold the original ids exactly where tokens were selected; nothing else changes
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])
    # random replacements are ordinary vocabulary ids
    assert set(masked[replaced].tolist()).isdisjoint(VOCAB.special_ids)
    assert int(masked[replaced].max()) < VOCAB.vocab_size


def test_special_and_padding_tokens_are_never_masked() -> None:
    ids, mask = batch(rows=64, length=32)
    masked, labels = mask_tokens(ids, mask, VOCAB, probability=1.0)  # every eligible token is selected
    special = torch.isin(ids, torch.tensor(VOCAB.special_ids)) | (mask == 0)
    assert bool((labels[special] == -100).all()) and torch.equal(masked[special], ids[special])
    assert bool((labels[~special] != -100).all())
    # padding ids that are not special still stay untouched when the attention mask is 0
    odd = torch.tensor([[CLS, 500, 501, SEP, 502, 503]])
    odd_mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    masked, labels = mask_tokens(odd, odd_mask, VOCAB, probability=1.0)
    assert labels.tolist() == [[-100, 500, 501, -100, -100, -100]]
    assert masked[0, 4:].tolist() == [502, 503]


def test_protected_tokens_are_never_masked() -> None:
    ids, mask = batch(rows=64, length=32)
    protected = torch.zeros_like(ids, dtype=torch.bool)
    protected[:, 1:6] = True
    masked, labels = mask_tokens(ids, mask, VOCAB, probability=1.0, protected=protected)
    assert bool((labels[protected] == -100).all()) and torch.equal(masked[protected], ids[protected])
    assert bool((labels[~protected & (mask == 1) & (ids != CLS) & (ids != SEP)] != -100).all())
    with pytest.raises(ValueError, match="protected"):
        mask_tokens(ids, mask, VOCAB, protected=protected[:, :3])


def test_reproducible_with_a_generator_and_input_untouched() -> None:
    ids, mask = batch(rows=16, length=24)
    original = ids.clone()
    a = mask_tokens(ids, mask, VOCAB, generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, mask, VOCAB, generator=torch.Generator().manual_seed(5))
    c = mask_tokens(ids, mask, VOCAB, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(ids, original)
    none, labels = mask_tokens(ids, mask, VOCAB, probability=0.0)
    assert torch.equal(none, ids) and bool((labels == -100).all())
    with pytest.raises(ValueError, match="probability"):
        mask_tokens(ids, mask, VOCAB, probability=1.5)


def test_with_the_bert_tokenizer(bert_tokenizer: Any) -> None:
    enc = bert_tokenizer(
        ["a cat on a mat. two dogs."] * 200, padding="max_length", max_length=16, return_tensors="pt"
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    masked, labels = mask_tokens(ids, mask, bert_tokenizer, generator=torch.Generator().manual_seed(0))
    special = torch.isin(ids, torch.tensor(bert_tokenizer.all_special_ids))
    assert bool((labels[special] == -100).all())
    selected = labels != -100
    assert within(int(selected.sum()), int((~special & (mask == 1)).sum()), 0.15)
    assert bool((masked[selected] == bert_tokenizer.mask_token_id).float().mean() > 0.7)
