"""Prompts the tokenizer cannot represent get a clear `PromptWarning` (issue 25, item 5): class names
that are only [UNK], a separator inside a class name, the same name twice; clean prompts stay
silent."""

from __future__ import annotations

import warnings

import pytest

from glipv2.processing import prompts


def test_unknown_only_class_names_warn(bert_tokenizer: object) -> None:
    with pytest.warns(prompts.PromptWarning, match=r"'ᚠᚢᚦ' are only \[UNK\]"):
        prompts.chunk_class_names(["cat", "ᚠᚢᚦ", "dog"], bert_tokenizer)  # type: ignore[arg-type]


def test_unknown_only_phrases_warn(bert_tokenizer: object) -> None:
    prompt = prompts.grounding_prompt("a ᏣᎳᎩ on a branch", spans=[(2, 5), (11, 17)])
    with pytest.warns(prompts.PromptWarning, match=r"'ᏣᎳᎩ' are only \[UNK\]"):
        prompts.check_prompt_tokens(prompt, bert_tokenizer)  # type: ignore[arg-type]


def test_separator_inside_a_class_name_warns() -> None:
    with pytest.warns(prompts.PromptWarning, match="'st. bernard' contain the separator"):
        prompts.detection_prompt(["poodle", "st. bernard"])


def test_duplicate_class_names_warn(bert_tokenizer: object) -> None:
    with pytest.warns(prompts.PromptWarning, match="'Cat' occur more than once"):
        prompts.detection_prompt(["Cat", "dog", "cat "])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chunks = prompts.chunk_class_names(["cat", "dog", "cat"], bert_tokenizer, chunk_size=1)  # type: ignore[arg-type]
    # warned once for the vocabulary, not again for each chunk
    assert len(chunks) == 3
    assert [str(w.message).count("occur more than once") for w in caught] == [1]


def test_duplicate_phrases_warn() -> None:
    with pytest.warns(prompts.PromptWarning, match="given more than once"):
        prompts.grounding_prompt("a dog and a cat", phrases=["dog", "dog", "cat"])
    with pytest.warns(prompts.PromptWarning, match="given more than once"):
        prompts.grounding_prompt("a dog and a cat", spans=[(2, 5), (2, 5)])


def test_clean_prompts_are_silent(bert_tokenizer: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prompts.chunk_class_names(["person", "bicycle", "traffic light"], bert_tokenizer)  # type: ignore[arg-type]
        prompts.grounding_prompt("a dog. a dog.")  # two mentions of the same words: two boxes
        prompts.grounding_prompt("a dog and a cat", phrases=["dog", "cat"])
