"""Captioning: unidirectional language modelling on the fused text stream (GLIPv2 §3).

The caption is the prompt, run in the core's causal mode (`TextFeatures.causal`): token t attends
to tokens <= t in the text encoder and in the fusion tower's text layers, and the image stream reads
no text, so P_t has seen the image and the caption up to t only. The head predicts token t+1 from
P_t: dense → GELU → LayerNorm → the text encoder's word-embedding matrix (tied, as BERT's LM head;
held by reference, so it is saved once — with the text encoder, or not at all when the model refers
to pretrained text weights) plus a bias. Trained with label-smoothed cross-entropy (Oscar's 0.1,
reference §2); decoded greedily or with beam search (`greedy_decode`, `beam_search`), the image side
computed once per image (`GLIPv2.generate_captions`). Optionally the head owns causal BERT layers
between P and the projection (`understanding_head_layers`) and passes only a share of its gradient on
to the core (`understanding_core_gradient_scale`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .base import HeadInputs, HeadTextLayers, LossContext, Targets, TaskHead, scale_gradient
from .mlm import IGNORE_INDEX

if TYPE_CHECKING:
    from ..config import GLIPv2Config
    from ..outputs import CoreOutput, GLIPv2Output


class CaptionHead(TaskHead):
    """forward -> `caption_logits` (B, T, vocab): at slot t, the logits of the token at t+1.

    Runs when asked for (`heads=["caption"]`), which makes the core causal (`causal_text`).
    Target per caption: `caption_labels` (T,) the next token at each slot, -100 where there is none
    (`next_token_labels`)."""

    name = "caption"
    loss_key = "caption"
    causal_text = True

    def __init__(self, config: GLIPv2Config) -> None:
        super().__init__()
        text = config.text_encoder
        d = int(text["hidden_size"])
        self.gradient_scale = config.understanding_core_gradient_scale
        self.layers = HeadTextLayers(config, causal=True)
        self.transform = nn.Sequential()
        self.transform.add_module("dense", nn.Linear(d, d))
        self.transform.add_module("act", ACT2FN[text.get("hidden_act", "gelu")])
        self.transform.add_module("LayerNorm", nn.LayerNorm(d, eps=float(text.get("layer_norm_eps", 1e-12))))
        self.bias = nn.Parameter(torch.zeros(int(text["vocab_size"])))
        # a plain tuple: the tied table belongs to the text encoder (see the module docstring)
        self._word_embeddings: tuple[nn.Embedding, ...] = ()

    def tie_output(self, word_embeddings: nn.Embedding) -> None:
        if word_embeddings.weight.shape[0] != self.bias.shape[0]:
            raise ValueError(
                f"the word-embedding table has {word_embeddings.weight.shape[0]} rows, the caption "
                f"head predicts {self.bias.shape[0]} tokens"
            )
        self._word_embeddings = (word_embeddings,)

    def logits(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) fused token features (and their (B, T) mask; default all real) -> (B, T, vocab)
        next-token logits, through the head's own causal layers when it has any."""
        if not self._word_embeddings:
            raise RuntimeError(
                "CaptionHead.tie_output was not called (GLIPv2 does it when it builds the heads)"
            )
        tokens = scale_gradient(tokens, self.gradient_scale)
        if len(self.layers.layers):
            mask = (
                torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device) if mask is None else mask
            )
            tokens = self.layers(tokens, mask)
        return F.linear(self.transform(tokens), self._word_embeddings[0].weight, self.bias)

    def wanted(self, inputs: HeadInputs) -> bool:
        return False

    def forward(self, core: CoreOutput, inputs: HeadInputs) -> dict[str, Any]:
        return {"caption_logits": self.logits(core.fused_token_features, core.text_attention_mask)}

    def unweighted_loss(self, output: GLIPv2Output, targets: Targets, context: LossContext) -> torch.Tensor:
        logits = output.caption_logits
        if logits is None:
            raise ValueError("use_caption needs output.caption_logits: run the model with heads=['caption']")
        labels = torch.stack([torch.as_tensor(t["caption_labels"], dtype=torch.long) for t in targets])
        labels = labels.to(logits.device)
        if labels.shape != logits.shape[:2]:
            raise ValueError(
                f"caption_labels must be (B, T) = {tuple(logits.shape[:2])}, got {tuple(labels.shape)}"
            )
        return F.cross_entropy(
            logits.float().flatten(0, 1),
            labels.flatten(),
            ignore_index=IGNORE_INDEX,
            label_smoothing=context.config.caption_label_smoothing,
        )


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) caption tokens ([CLS] w_1 … w_n [SEP], pads) -> (B, T) the token each slot predicts:
    input_ids[t + 1] where that is a real token, -100 elsewhere (the last real slot, [SEP], and pads)."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    real_next = attention_mask[:, 1:].bool()
    labels[:, :-1] = torch.where(real_next, input_ids[:, 1:], labels[:, :-1])
    return labels


# (N, L) token ids, (N, L) attention mask -> (N, vocab) log-probabilities of token L + 1
NextTokenFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def greedy_decode(
    next_token: NextTokenFn, batch: int, bos: int, eos: int, max_length: int, device: torch.device
) -> list[list[int]]:
    """The most likely token at every step until `eos` or `max_length` generated tokens; per
    sequence the generated ids without `bos` and `eos`."""
    ids = torch.full((batch, 1), bos, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(max_length):
        mask = torch.ones_like(ids)
        token = next_token(ids, mask).argmax(dim=-1)
        token = torch.where(finished, torch.full_like(token, eos), token)
        ids = torch.cat([ids, token[:, None]], dim=1)
        finished |= token == eos
        if bool(finished.all()):
            break
    return [_strip(row.tolist()[1:], eos) for row in ids]


def beam_search(
    next_token: NextTokenFn,
    batch: int,
    bos: int,
    eos: int,
    max_length: int,
    device: torch.device,
    beam_size: int = 3,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """Beam search: `beam_size` live hypotheses per image; a hypothesis that emits `eos` is finished
    and ranked by log-probability / length ** length_penalty (length: generated tokens, `eos`
    included). An image is done when it has `beam_size` finished hypotheses and none of its live ones
    scores better at the current length; at `max_length` the live ones are finished as they are.
    `next_token` is called on batch × beam_size rows, image i's beams at rows i·K … i·K + K − 1 (a
    row's image never changes: beams are only re-ordered within an image). Beam size 1 is greedy."""
    k = beam_size
    if k < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    ids = torch.full((batch * k, 1), bos, dtype=torch.long, device=device)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at the start: the others would repeat it
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch

    def normalised(score: float, length: int) -> float:
        return score / (length**length_penalty)

    for step in range(1, max_length + 1):
        log_probs = next_token(ids, torch.ones_like(ids)).float()  # (B·K, V)
        vocab = log_probs.shape[-1]
        candidates = (scores[:, :, None] + log_probs.view(batch, k, vocab)).view(batch, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=1)
        next_rows, next_tokens, next_scores = [], [], []
        for i in range(batch):
            rows: list[tuple[int, int, float]] = []
            for score, index in zip(top_scores[i].tolist(), top_index[i].tolist()):
                beam, token = divmod(index, vocab)
                if score == float("-inf"):
                    break
                if done[i]:
                    rows.append((beam, eos, float("-inf")))
                elif token == eos:
                    if len(finished[i]) < k or normalised(score, step) > min(s for s, _ in finished[i]):
                        sequence = ids[i * k + beam, 1:].tolist()
                        finished[i].append((normalised(score, step), sequence))
                        finished[i].sort(key=lambda h: -h[0])
                        del finished[i][k:]
                else:
                    rows.append((beam, token, score))
                if len(rows) == k:
                    break
            while len(rows) < k:  # an image whose candidates ran out keeps dead beams
                rows.append((0, eos, float("-inf")))
            if not done[i] and len(finished[i]) == k:
                best_live = max(s for _, _, s in rows)
                done[i] = best_live == float("-inf") or normalised(best_live, step) <= finished[i][-1][0]
            for beam, token, score in rows:
                next_rows.append(i * k + beam)
                next_tokens.append(token)
                next_scores.append(score)
        ids = torch.cat(
            [ids[torch.tensor(next_rows, device=device)], torch.tensor(next_tokens, device=device)[:, None]],
            dim=1,
        )
        scores = torch.tensor(next_scores, device=device).view(batch, k)
        if all(done):
            break
    out = []
    for i in range(batch):
        hypotheses = list(finished[i])
        if not done[i]:  # max_length reached: the live beams count as they are
            length = ids.shape[1] - 1
            for beam in range(k):
                score = float(scores[i, beam])
                if score > float("-inf"):
                    hypotheses.append((normalised(score, length), ids[i * k + beam, 1:].tolist()))
        best = max(hypotheses, key=lambda h: h[0])[1] if hypotheses else []
        out.append(_strip(best, eos))
    return out


def _strip(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens
