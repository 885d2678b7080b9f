"""Prompts: the official detection form, phrase search, positive maps, chunking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glipv2.processing import (
    chunk_class_names,
    detection_prompt,
    find_phrase,
    grounding_prompt,
    label_scores,
    tokenize_prompts,
)

LVIS_NAMES = Path(__file__).resolve().parents[1] / "data" / "lvis_v1_category_names.txt"
FIXTURE_CAPTION = "red circle. blue square. green triangle."


def positive_tokens(tokenizer: Any, prompt: Any, max_length: int = 256) -> list[list[int]]:
    tokens = tokenize_prompts(tokenizer, prompt.text, max_length, pad_to_max_length=False)
    positive = prompt.positive_map(tokens.offsets[0], tokens.attention_mask[0])
    return [torch.nonzero(row).squeeze(1).tolist() for row in positive]


def test_detection_prompt_is_the_official_evaluation_form() -> None:
    prompt = detection_prompt(["person", " bicycle ", "traffic light"])
    assert prompt.text == "person. bicycle. traffic light"  # ". " between, no trailing separator
    assert prompt.names == ("person", "bicycle", "traffic light")
    assert [prompt.text[s:e] for ((s, e),) in prompt.spans] == list(prompt.names)


def test_fixture_caption_gives_the_official_positive_map(bert_tokenizer: Any) -> None:
    """FIXTURE.md: positive_map_label_to_token = {1: [1, 2], 2: [4, 5], 3: [7, 8]}."""
    by_phrase = grounding_prompt(FIXTURE_CAPTION, phrases=["red circle", "blue square", "green triangle"])
    by_span = grounding_prompt(FIXTURE_CAPTION, spans=[(0, 10), (12, 23), (25, 39)])
    by_default = grounding_prompt(FIXTURE_CAPTION)
    for prompt in (by_phrase, by_span, by_default):
        assert prompt.names == ("red circle", "blue square", "green triangle")
        assert positive_tokens(bert_tokenizer, prompt) == [[1, 2], [4, 5], [7, 8]]


def test_phrases_match_whole_words_every_occurrence_any_case() -> None:
    caption = "A car next to a cart; the Car is red. car"
    assert find_phrase(caption, "car") == [(2, 5), (26, 29), (38, 41)]  # not inside "cart"
    assert find_phrase(caption, "t-shirt") == []
    # a hyphen separates words, as it separates WordPieces
    assert find_phrase("a t-shirt and a shirt", "shirt") == [(4, 9), (16, 21)]
    prompt = grounding_prompt(caption, phrases=["car", "cart"])
    assert prompt.spans == (((2, 5), (26, 29), (38, 41)), ((16, 20),))


def test_a_phrase_with_several_occurrences_marks_all_its_tokens(bert_tokenizer: Any) -> None:
    prompt = grounding_prompt("dog. cat. dog", phrases=["dog", "cat"])
    assert positive_tokens(bert_tokenizer, prompt) == [[1, 5], [3]]


def test_grounding_spans_accept_several_spans_per_phrase(bert_tokenizer: Any) -> None:
    prompt = grounding_prompt("dog. cat. dog", spans=[[(0, 3), (10, 13)], (5, 8)])
    assert prompt.names == ("dog", "cat")
    assert positive_tokens(bert_tokenizer, prompt) == [[1, 5], [3]]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: detection_prompt([]), "class list is empty"),
        (lambda: detection_prompt("person"), "list of names"),
        (lambda: detection_prompt(["cat", "  "]), "class name 1"),
        (lambda: detection_prompt(["cat", "?!."]), "punctuation only"),
        (lambda: grounding_prompt("", phrases=["x"]), "caption is empty"),
        (lambda: grounding_prompt("a red car", phrases=["blue car"]), "does not occur"),
        (lambda: grounding_prompt("a red car", phrases=["car"], spans=[(0, 1)]), "not both"),
        (lambda: grounding_prompt("a red car", spans=[(3, 30)]), "outside the caption"),
        (lambda: grounding_prompt("...!"), "no words"),
    ],
)
def test_bad_prompts_are_clear_errors(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_a_label_cut_off_by_truncation_is_an_error(bert_tokenizer: Any) -> None:
    prompt = detection_prompt([f"thing{i}" for i in range(10)])
    with pytest.raises(ValueError, match="chunks"):
        positive_tokens(bert_tokenizer, prompt, max_length=8)


def test_label_scores_are_the_mean_over_the_label_tokens() -> None:
    probs = torch.tensor([[0.0, 0.2, 0.4, 0.9, 0.1]])
    positive = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)
    assert torch.allclose(label_scores(probs, positive), torch.tensor([[0.3, 0.9]]))


# --- property test ---------------------------------------------------------------------------
_chars = list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-'&/()éüñçøßåœ日本語кот")
# words of several WordPieces, and repeats of the same word inside and across names
_words = st.one_of(
    st.text(st.sampled_from(_chars), min_size=1, max_size=8),
    st.sampled_from(["xylophone", "antidisestablishment", "zzyzx", "Ångström", "car", "car"]),
)
_names = st.lists(
    st.lists(_words, min_size=1, max_size=3).map(" ".join).filter(lambda s: any(c.isalnum() for c in s)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=_names, repeat=st.booleans())
def test_every_name_maps_to_exactly_its_tokens_and_back(
    bert_tokenizer: Any, names: list[str], repeat: bool
) -> None:
    """Random class lists (unicode, punctuation, repeated words, names of several WordPieces):
    a name's positive tokens are exactly the tokens inside its span, no token belongs to two
    names, and every token inside a span leads back to that name."""
    if repeat:
        names = names + names[:2]  # repeated names are separate labels with their own spans
    prompt = detection_prompt(names)
    tokens = tokenize_prompts(bert_tokenizer, prompt.text, 256, pad_to_max_length=False)
    offsets = tokens.offsets[0].tolist()
    positive = prompt.positive_map(tokens.offsets[0], tokens.attention_mask[0])
    assert positive.shape == (len(names), len(offsets))
    owner: dict[int, int] = {}
    for k, ((start, end),) in enumerate(prompt.spans):
        inside = [t for t, (a, b) in enumerate(offsets) if start <= a < b <= end]
        assert inside, f"name {prompt.names[k]!r} has no token of its own"
        assert torch.nonzero(positive[k]).squeeze(1).tolist() == inside
        for t in inside:
            assert t not in owner
            owner[t] = k
    separators = {t for t, (a, b) in enumerate(offsets) if b > a and t not in owner}
    assert all(prompt.text[offsets[t][0] : offsets[t][1]] == "." for t in separators)


# --- chunking ----------------------------------------------------------------------------------
def test_chunks_fit_and_keep_global_labels(bert_tokenizer: Any) -> None:
    names = [f"object number {i}" for i in range(12)]  # 4 tokens each + 1 separator
    chunks = chunk_class_names(names, bert_tokenizer, max_tokens=24)
    assert len(chunks) == 3
    assert [c.label_offset for c in chunks] == [0, 5, 10]
    assert [n for c in chunks for n in c.prompt.names] == names
    for chunk in chunks:
        assert len(bert_tokenizer(chunk.prompt.text)["input_ids"]) <= 24
    fixed = chunk_class_names(names, bert_tokenizer, max_tokens=256, chunk_size=5)
    assert [c.label_offset for c in fixed] == [0, 5, 10] and [c.prompt.num_labels for c in fixed] == [5, 5, 2]
    split = chunk_class_names(names, bert_tokenizer, max_tokens=24, chunk_size=8)  # 8 do not fit in 24
    assert [c.label_offset for c in split] == [0, 5, 8]


def test_lvis_vocabulary_chunks(bert_tokenizer: Any) -> None:
    names = LVIS_NAMES.read_text().splitlines()
    assert len(names) == 1203
    chunks = chunk_class_names(names, bert_tokenizer, max_tokens=256, chunk_size=40)
    assert len(chunks) == 31 and sum(c.prompt.num_labels for c in chunks) == 1203
    packed = chunk_class_names(names, bert_tokenizer, max_tokens=256)
    for chunk in packed:
        maps = positive_tokens(bert_tokenizer, chunk.prompt)
        assert len(maps) == chunk.prompt.num_labels and all(maps)
    assert [n for c in packed for n in c.prompt.names] == names


def test_a_name_longer_than_a_prompt_is_an_error(bert_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="alone has"):
        chunk_class_names(["word " * 30], bert_tokenizer, max_tokens=16)
