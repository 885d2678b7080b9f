"""Prompt tokenization with the official padding policy."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from glipv2.processing import tokenize_prompts

CAPTION = "red circle. blue square. green triangle."


def test_pads_to_256_slots_as_official(bert_tokenizer: Any, fixture_outputs: dict[str, Any]) -> None:
    text = tokenize_prompts(bert_tokenizer, CAPTION)
    assert text.input_ids.shape == text.attention_mask.shape == (1, 256)
    n = int(text.attention_mask.sum())
    assert torch.equal(text.input_ids[0, :n], fixture_outputs["input_ids"])
    assert bool((text.input_ids[0, n:] == 0).all())
    assert torch.equal(text.attention_mask, fixture_outputs["lang_masks"].to(text.attention_mask.dtype))


def test_longest_padding_and_offsets(bert_tokenizer: Any) -> None:
    text = tokenize_prompts(bert_tokenizer, [CAPTION, "a cat"], pad_to_max_length=False)
    assert text.input_ids.shape == (2, 11)
    assert text.attention_mask[1].tolist() == [1, 1, 1, 1] + [0] * 7
    # offsets point back into the caption: token 2 is "circle"
    start, end = text.offsets[0, 2].tolist()
    assert CAPTION[start:end] == "circle"
    assert text.offsets[0, 0].tolist() == [0, 0]  # [CLS]


def test_truncates_to_max_length(bert_tokenizer: Any) -> None:
    text = tokenize_prompts(bert_tokenizer, " ".join(["word"] * 400), max_length=256)
    assert text.input_ids.shape == (1, 256) and int(text.input_ids[0, -1]) == bert_tokenizer.sep_token_id


@pytest.mark.parametrize("prompts", [[], [""], ["a cat", "   "]])
def test_empty_prompts_raise(bert_tokenizer: Any, prompts: list[str]) -> None:
    with pytest.raises(ValueError):
        tokenize_prompts(bert_tokenizer, prompts)
