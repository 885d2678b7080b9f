"""The fast WordPiece tokenizer, and prompt tokenization with the official padding policy (all
256 slots unless configured off).

Vocabularies are resolved locally first (a saved model folder, the MiniLM-L6 package's copy of
bert-base-uncased's vocab), and only then through the hub, so tests never need network."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import BertTokenizerFast, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..modeling.text_encoder import MINILM, minilm_path

BERT_BASE_UNCASED = "bert-base-uncased"
# md5 of bert-base-uncased's vocab.txt; the MiniLM package ships the identical file.
BERT_BASE_UNCASED_VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"


def _local_bert_base_vocab() -> Path | None:
    """bert-base-uncased's vocab, found offline in the MiniLM package (verified by md5)."""
    try:
        vocab = minilm_path() / "vocab.txt"
    except ImportError:
        return None
    if vocab.is_file() and hashlib.md5(vocab.read_bytes()).hexdigest() == BERT_BASE_UNCASED_VOCAB_MD5:
        return vocab
    return None


def load_tokenizer(source: str) -> PreTrainedTokenizerFast:
    """A fast tokenizer (character offsets are needed for phrase→token maps).

    `source`: a folder with tokenizer files, "minilm", or a hub id. "bert-base-uncased" is served
    from the identical vocab shipped with the MiniLM package when that is installed."""
    path = Path(source)
    if path.is_dir():
        return BertTokenizerFast.from_pretrained(str(path))
    if source == MINILM:
        return BertTokenizerFast.from_pretrained(str(minilm_path()))
    if source == BERT_BASE_UNCASED and (vocab := _local_bert_base_vocab()) is not None:
        # same vocab and the same settings (lower-casing, accent stripping) as bert-base-uncased
        return BertTokenizerFast.from_pretrained(str(vocab.parent))
    return BertTokenizerFast.from_pretrained(source)


@dataclass
class TokenizedPrompts:
    """input_ids, attention_mask: (B, T); offsets: (B, T, 2) character spans ((0, 0) for special
    tokens and padding) — what phrase→token maps are built from."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    offsets: torch.Tensor


def tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_length: int = 256,
    pad_to_max_length: bool = True,
) -> TokenizedPrompts:
    """Tokenize prompts as the official model does: [CLS] ... [SEP], truncated to `max_length`,
    padded to `max_length` (official `PAD_MAX`) or to the longest prompt of the batch."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt {i} is empty: every prompt needs some text")
    enc = tokenizer(
        list(prompts),
        max_length=max_length,
        truncation=True,
        return_offsets_mapping=True,
        padding="max_length" if pad_to_max_length else "longest",
        return_tensors="pt",
    )
    return TokenizedPrompts(enc["input_ids"], enc["attention_mask"], enc["offset_mapping"])
