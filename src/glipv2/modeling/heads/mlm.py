"""L_mlm: a BERT-style language-modelling head on the fused token features P.

Our own layers rather than transformers' `BertLMPredictionHead`: in transformers 5 that head's
`decoder` carries its own bias and leaves the separate `bias` parameter for `PreTrainedModel` to
tie; used alone it would hold an untrained, unused duplicate (and DDP would wait for its gradient).
The layout (`transform.dense`, `transform.LayerNorm`, `decoder.weight`, `bias`) is the official
`rpn.head.mlm_head`'s, whose `decoder.bias` is tied to `bias`.

The input corruption (15 % of the tokens, 80/10/10) is done with the data (`glipv2.data.mlm`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .base import HeadInputs, LossConfig, LossContext, Targets, TaskHead, fit_slots

if TYPE_CHECKING:
    from ..config import GLIPv2Config
    from ..outputs import CoreOutput, GLIPv2Output

IGNORE_INDEX = -100  # cross-entropy's default ignore_index: tokens that are not predicted


class MLMHead(TaskHead):
    """dense → activation → LayerNorm → vocabulary projection on P (official `rpn.head.mlm_head`).

    forward -> `mlm_logits` (B, T, vocab); runs in training, or when called with
    `return_mlm_logits=True`."""

    name = "mlm"
    loss_key = "mlm"
    options = ("return_mlm_logits",)

    def __init__(self, config: GLIPv2Config) -> None:
        super().__init__()
        text = config.text_encoder
        d = int(text["hidden_size"])
        self.transform = nn.Sequential()
        self.transform.add_module("dense", nn.Linear(d, d))
        self.transform.add_module("act", ACT2FN[text.get("hidden_act", "gelu")])
        self.transform.add_module("LayerNorm", nn.LayerNorm(d, eps=float(text.get("layer_norm_eps", 1e-12))))
        self.decoder = nn.Linear(d, int(text["vocab_size"]), bias=False)
        self.bias = nn.Parameter(torch.zeros(int(text["vocab_size"])))

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) fused token features -> (B, T, vocab) logits."""
        return self.decoder(self.transform(tokens)) + self.bias

    def wanted(self, inputs: HeadInputs) -> bool:
        wanted = inputs.get("return_mlm_logits")
        return inputs.training if wanted is None else bool(wanted)

    def forward(self, core: CoreOutput, inputs: HeadInputs) -> dict[str, Any]:
        return {"mlm_logits": self.logits(core.fused_token_features)}

    def unweighted_loss(self, output: GLIPv2Output, targets: Targets, context: LossContext) -> torch.Tensor:
        return self.loss_mlm(output.mlm_logits, targets)

    def prepare_target(
        self,
        target: dict[str, Any],
        prepared: dict[str, torch.Tensor],
        num_tokens: int,
        config: LossConfig,
        index: int,
    ) -> None:
        if not self.loss_active(config):
            return
        device = prepared["boxes"].device
        if "mlm_labels" in target:
            mlm = torch.as_tensor(target["mlm_labels"], dtype=torch.long, device=device).reshape(-1)
            prepared["mlm_labels"] = fit_slots(mlm, num_tokens, IGNORE_INDEX, f"target {index} mlm_labels")
        else:
            prepared["mlm_labels"] = torch.full((num_tokens,), IGNORE_INDEX, dtype=torch.long, device=device)

    @staticmethod
    def loss_mlm(mlm_logits: torch.Tensor | None, targets: Targets) -> torch.Tensor:
        """L_mlm, unweighted: cross-entropy of mlm_logits (B, T, V) against the `mlm_labels` (T,)
        of each target (-100 ignored, mean over the masked tokens of this rank, as official);
        targets without `mlm_labels` count as fully ignored."""
        if mlm_logits is None:
            raise ValueError(
                "use_mlm needs output.mlm_logits: a model with an MLM head, in train mode "
                "(or called with return_mlm_logits=True)"
            )
        labels = torch.stack([t["mlm_labels"] for t in targets]).to(mlm_logits.device)
        if not bool((labels != IGNORE_INDEX).any()):
            return mlm_logits.reshape(-1)[:0].sum()  # nothing masked: a graph-connected zero
        return F.cross_entropy(mlm_logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
