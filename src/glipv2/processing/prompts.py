"""Prompts: class lists and captions with phrase spans, phrase×token positive maps, chunking.

A `Prompt` is the text fed to the text encoder plus, for each label (a class name or a phrase),
the character spans that name it. The positive map (K labels × T token slots) comes from the
tokenizer's offsets: a token belongs to a label when its characters overlap one of the label's
spans — for clean names this is the official `char_to_token(start) .. char_to_token(end - 1)`
range (reference §8), and it stays right when a span starts or ends on a character that yields
no token. Scores go back from tokens to labels as the mean over the label's tokens
(official `SCORE_AGG MEAN`).
"""

from __future__ import annotations

import numbers
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

Span = tuple[int, int]

# Official evaluation prompts join names with ". " and no trailing separator (reference §8).
DETECTION_SEPARATOR = ". "
# Where an un-annotated caption is cut into phrases (official: NLTK noun phrases; we avoid NLTK).
_PHRASE_BREAKS = re.compile(r"[.;,:!?\n]+")


class PromptWarning(UserWarning):
    """A prompt the model will read differently from what was meant (a class name that tokenizes
    to [UNK] only, a separator inside a class name, the same name twice): results come, but the
    labels concerned cannot be told apart or are split in two."""


def warn_prompt(message: str) -> None:
    warnings.warn(message, PromptWarning, stacklevel=3)


@dataclass(frozen=True)
class Prompt:
    """text: what the text encoder reads; names: one per label (K); spans: per label, the
    character spans `[start, end)` of `text` that name it (a phrase may occur several times)."""

    text: str
    names: tuple[str, ...]
    spans: tuple[tuple[Span, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.spans):
            raise ValueError(f"{len(self.names)} names but {len(self.spans)} span lists")
        for name, spans in zip(self.names, self.spans):
            if not spans:
                raise ValueError(f"label {name!r} has no character span in the prompt")
            for start, end in spans:
                if not 0 <= start < end <= len(self.text):
                    raise ValueError(
                        f"span ({start}, {end}) of {name!r} lies outside the prompt (length {len(self.text)})"
                    )

    @property
    def num_labels(self) -> int:
        return len(self.names)

    def positive_map(self, offsets: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """offsets: (T, 2) character spans of the tokens of `text` ((0, 0) for special and pad
        tokens) -> (K, T) bool, True where token t belongs to label k. A label none of whose
        tokens survived truncation, or whose characters yield no token, is an error."""
        offsets = offsets.to(torch.long)
        real = offsets[:, 1] > offsets[:, 0]
        if attention_mask is not None:
            real &= attention_mask.to(torch.bool)
        positive = torch.stack([span_tokens(offsets, spans, attention_mask) for spans in self.spans])
        last_char = int(offsets[:, 1][real].max()) if bool(real.any()) else 0
        for k, spans in enumerate(self.spans):
            if not bool(positive[k].any()):
                if min(start for start, _ in spans) >= last_char:
                    raise ValueError(
                        f"label {self.names[k]!r} lies beyond the last token the model reads; "
                        "the prompt is too long: split the vocabulary into chunks"
                    )
                raise ValueError(f"label {self.names[k]!r} produces no tokens")
        return positive


def span_tokens(
    offsets: torch.Tensor,
    spans: Sequence[Span],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """offsets: (T, 2) token character spans -> (T,) bool: the real tokens overlapping any span."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = ends > starts
    if attention_mask is not None:
        real &= attention_mask.to(torch.bool)
    hit = torch.zeros_like(real)
    for start, end in spans:
        hit |= (starts < end) & (ends > start)
    return real & hit


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, got {type(name).__name__}")
    stripped = name.strip()
    if not any(ch.isalnum() for ch in stripped):
        raise ValueError(f"{what} {name!r} is empty or punctuation only")
    return stripped


def _normalised(name: str) -> str:
    # what an uncased tokenizer sees: case and runs of whitespace do not tell names apart
    return " ".join(name.lower().split())


def duplicate_names(names: Sequence[str]) -> list[str]:
    """The names that occur more than once (case and spacing ignored), in first-seen order."""
    counts: dict[str, int] = {}
    first: dict[str, str] = {}
    for name in names:
        key = _normalised(name)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, name)
    return [first[k] for k, n in counts.items() if n > 1]


def check_class_names(names: Sequence[str], separator: str = DETECTION_SEPARATOR) -> None:
    """Warn (`PromptWarning`) about class names the joined prompt cannot keep apart: a name holding
    the separator reads as two classes ("st. bernard" -> "st", "bernard"), and a repeated name
    splits its detections between two labels that are the same to the model."""
    mark = separator.strip()
    # the tokenizer drops spaces, so "st.bernard" and "st. bernard" are the same tokens as a joint
    if mark:
        joined = [n for n in names if mark in n]
        if joined:
            warn_prompt(
                f"class name(s) {', '.join(repr(n) for n in joined[:5])} contain the separator "
                f"{mark!r} of the joined prompt: the model reads each as several classes"
            )
    repeated = duplicate_names(names)
    if repeated:
        warn_prompt(
            f"class name(s) {', '.join(repr(n) for n in repeated[:5])} occur more than once: their "
            "detections are split between labels the model cannot tell apart"
        )


def detection_prompt(
    class_names: Sequence[str], separator: str = DETECTION_SEPARATOR, *, check: bool = True
) -> Prompt:
    """Class names -> "person. bicycle. car" (official evaluation form), one label per name.
    With `check`, names the prompt cannot keep apart are warned about (`check_class_names`)."""
    if isinstance(class_names, str):
        raise ValueError("class_names must be a list of names, not one string")
    if len(class_names) == 0:
        raise ValueError("the class list is empty")
    names = [_check_name(n, f"class name {i}") for i, n in enumerate(class_names)]
    if check:
        check_class_names(names, separator)
    parts: list[str] = []
    spans: list[tuple[Span, ...]] = []
    cursor = 0
    for i, name in enumerate(names):
        if i:
            parts.append(separator)
            cursor += len(separator)
        spans.append(((cursor, cursor + len(name)),))
        parts.append(name)
        cursor += len(name)
    return Prompt("".join(parts), tuple(names), tuple(spans))


def find_phrase(caption: str, phrase: str) -> list[Span]:
    """Every whole-word, case-insensitive occurrence of `phrase` in `caption` ("car" does not
    match inside "cart" — the official demo's substring search does, shifting its labels)."""
    pattern = re.compile(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", re.IGNORECASE)
    return [(m.start(), m.end()) for m in pattern.finditer(caption)]


def grounding_prompt(
    caption: str, phrases: Sequence[str] | None = None, spans: Sequence[Span | Sequence[Span]] | None = None
) -> Prompt:
    """A free caption with its phrases, given as strings found in the caption (every whole-word
    occurrence), as character spans (one `(start, end)` or a list of them per phrase), or — when
    neither is given — the caption's pieces between punctuation marks."""
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("the caption is empty")
    if phrases is not None and spans is not None:
        raise ValueError("give phrases or spans, not both")
    if spans is not None:
        if isinstance(spans, (str, bytes)) or not isinstance(spans, Sequence):
            raise ValueError(f"spans must be a list of (start, end) pairs, got {type(spans).__name__}")
        per_label: list[tuple[Span, ...]] = []
        for i, item in enumerate(spans):
            group = [item] if _is_span(item) else list(item) if isinstance(item, (list, tuple)) else None
            if not group or not all(_is_span(pair) for pair in group):
                raise ValueError(
                    f"span {i} must be a (start, end) pair of integers or a non-empty list of them, got {item!r}"
                )
            group_spans = tuple((int(s), int(e)) for s, e in group)
            for s, e in group_spans:
                if not 0 <= s < e <= len(caption):
                    raise ValueError(f"span {i} ({s}, {e}) lies outside the caption (length {len(caption)})")
            per_label.append(group_spans)
        if not per_label:
            raise ValueError("the span list is empty")
        names = tuple(caption[g[0][0] : g[0][1]] for g in per_label)
        for i, name in enumerate(names):
            _check_name(name, f"span {i}")
        _warn_same_spans(names, per_label)
        return Prompt(caption, names, tuple(per_label))
    if phrases is not None:
        if isinstance(phrases, str):
            phrases = [phrases]
        if len(phrases) == 0:
            raise ValueError("the phrase list is empty")
        names = [_check_name(phrase, f"phrase {i}") for i, phrase in enumerate(phrases)]
        found: list[tuple[Span, ...]] = []
        for name in names:
            occurrences = find_phrase(caption, name)
            if not occurrences:
                raise ValueError(f"phrase {name!r} does not occur in the caption {caption!r}")
            found.append(tuple(occurrences))
        _warn_same_spans(names, found)
        return Prompt(caption, tuple(names), tuple(found))
    pieces: list[tuple[str, Span]] = []
    cursor = 0
    for piece in _PHRASE_BREAKS.split(caption):
        start = caption.index(piece, cursor)
        cursor = start + len(piece)
        stripped = piece.strip()
        if any(ch.isalnum() for ch in stripped):
            offset = start + piece.index(stripped)
            pieces.append((stripped, (offset, offset + len(stripped))))
    if not pieces:
        raise ValueError(f"the caption {caption!r} has no words to ground")
    return Prompt(caption, tuple(p for p, _ in pieces), tuple((s,) for _, s in pieces))


def _warn_same_spans(names: Sequence[str], spans: Sequence[Sequence[Span]]) -> None:
    # two labels on the same characters get the same tokens: the model cannot tell them apart
    seen: dict[frozenset[Span], str] = {}
    repeated: list[str] = []
    for name, group in zip(names, spans):
        key = frozenset(group)
        if key in seen and seen[key] not in repeated:
            repeated.append(seen[key])
        seen.setdefault(key, name)
    if repeated:
        warn_prompt(
            f"phrase(s) {', '.join(repr(n) for n in repeated[:5])} are given more than once (the same "
            "characters of the caption): their detections are split between identical labels"
        )


def _is_span(value: object) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
    )


def label_scores(token_scores: torch.Tensor, positive_map: torch.Tensor) -> torch.Tensor:
    """token_scores: (..., T) probabilities; positive_map: (K, T) -> (..., K), the mean over each
    label's tokens (official `SCORE_AGG MEAN`)."""
    weights = positive_map.to(token_scores.dtype)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1)
    return token_scores @ weights.T


def unknown_only(
    names: Sequence[str], token_ids: Sequence[Sequence[int]], tokenizer: PreTrainedTokenizerBase
) -> list[str]:
    """The names whose tokens (without [CLS]/[SEP]) are all the tokenizer's unknown token."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    return [name for name, ids in zip(names, token_ids) if ids and all(i == unk for i in ids)]


def check_prompt_tokens(prompt: Prompt, tokenizer: PreTrainedTokenizerBase) -> None:
    """Warn (`PromptWarning`) about labels of any prompt (a caption's phrases too) that tokenize
    to [UNK] only."""
    texts = [" ".join(prompt.text[s:e] for s, e in spans) for spans in prompt.spans]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    unknown = unknown_only(prompt.names, ids, tokenizer)
    if unknown:
        warn_prompt(
            f"phrase(s) {', '.join(repr(n) for n in unknown[:5])} are only [UNK] to the tokenizer: "
            "the model cannot read them"
        )


@dataclass(frozen=True)
class PromptChunk:
    """One pass of a long vocabulary: its prompt and the global index of its first label."""

    prompt: Prompt
    label_offset: int


def chunk_class_names(
    class_names: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int = 256,
    chunk_size: int | None = None,
    separator: str = DETECTION_SEPARATOR,
) -> list[PromptChunk]:
    """Split a vocabulary into detection prompts that each fit `max_tokens` (with [CLS]/[SEP]).

    With `chunk_size`, chunks hold that many names (official `TEST.CHUNKED_EVALUATION`, LVIS: 40),
    and a chunk that still does not fit is split further; without it, names are packed greedily.
    Labels keep their global index through `label_offset`."""
    prompt = detection_prompt(class_names, separator)  # validates every name
    names = list(prompt.names)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    # BERT-style pre-tokenizers split at whitespace and punctuation, so a joined prompt costs the
    # sum of its names' tokens plus one per separator; checked against the real prompt below.
    name_ids = tokenizer(names, add_special_tokens=False)["input_ids"]
    name_tokens = [len(ids) for ids in name_ids]
    unknown = unknown_only(names, name_ids, tokenizer)
    if unknown:
        warn_prompt(
            f"class name(s) {', '.join(repr(n) for n in unknown[:5])} are only [UNK] to the "
            "tokenizer: the model cannot read them, and cannot tell them apart"
        )
    sep_tokens = (
        len(tokenizer(separator.strip(), add_special_tokens=False)["input_ids"]) if separator.strip() else 0
    )
    budget = max_tokens - 2
    for name, n in zip(names, name_tokens):
        if n > budget:
            raise ValueError(
                f"class name {name!r} alone has {n} tokens, more than the {budget} a prompt holds"
            )
    groups: list[range] = (
        [range(i, min(i + chunk_size, len(names))) for i in range(0, len(names), chunk_size)]
        if chunk_size
        else [range(len(names))]
    )
    chunks: list[PromptChunk] = []
    for group in groups:
        start = group.start
        used = 0
        for i in group:
            cost = name_tokens[i] + (sep_tokens if i > start else 0)
            if i > start and used + cost > budget:
                chunks.append(PromptChunk(detection_prompt(names[start:i], separator, check=False), start))
                start, used, cost = i, 0, name_tokens[i]
            used += cost
        chunks.append(PromptChunk(detection_prompt(names[start : group.stop], separator, check=False), start))
    for chunk in chunks:
        n = len(tokenizer(chunk.prompt.text)["input_ids"])
        if n > max_tokens:  # only a tokenizer that merges across separators could get here
            raise ValueError(
                f"prompt chunk starting at class {chunk.label_offset} has {n} tokens "
                f"(> {max_tokens}); use a smaller chunk_size"
            )
    return chunks
