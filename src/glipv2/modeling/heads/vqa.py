"""VQA: an answer classifier on the fused start-of-sequence token of P (GLIPv2 §3).

The question is the prompt: it goes through the deep fusion like a grounding sentence, so its
[CLS] slot in the fused P has read the image at every fusion block. The classifier is Oscar's
(several GLIPv2 authors; reference §2): Linear → GELU → LayerNorm → Linear over the answer
vocabulary, trained with binary cross-entropy against soft scores and scaled by the number of
answers (a sum over answers, mean over questions). The vocabulary is `GLIPv2Config.vqa_answers`.
Optionally the head owns BERT layers between P and the classifier (`understanding_head_layers`) and
passes only a share of its gradient on to the core (`understanding_core_gradient_scale`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import HeadInputs, HeadTextLayers, LossContext, Targets, TaskHead, scale_gradient

if TYPE_CHECKING:
    from ..config import GLIPv2Config
    from ..outputs import CoreOutput, GLIPv2Output


class VQAHead(TaskHead):
    """forward -> `vqa_logits` (B, A) over the A answers of `config.vqa_answers`.

    Runs when asked for (`heads=["vqa"]`): a detection prompt has no question to answer.
    Target per question: `vqa_scores` (A,) soft scores in [0, 1] (min(1, annotators / 3))."""

    name = "vqa"
    loss_key = "vqa"

    def __init__(self, config: GLIPv2Config) -> None:
        super().__init__()
        d = config.text_hidden_size
        hidden = config.vqa_hidden_size or 2 * d
        eps = float(config.text_encoder.get("layer_norm_eps", 1e-12))
        self.gradient_scale = config.understanding_core_gradient_scale
        self.layers = HeadTextLayers(config, causal=False)
        self.classifier = nn.Sequential(
            nn.Linear(d, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden, eps=eps),
            nn.Linear(hidden, len(config.vqa_answers)),
        )

    def wanted(self, inputs: HeadInputs) -> bool:
        return False

    def forward(self, core: CoreOutput, inputs: HeadInputs) -> dict[str, Any]:
        # slot 0 is [CLS]: the tokenizer puts it first and the fusion keeps the order of the slots
        tokens = scale_gradient(core.fused_token_features, self.gradient_scale)
        tokens = self.layers(tokens, core.text_attention_mask)
        return {"vqa_logits": self.classifier(tokens[:, 0])}

    def unweighted_loss(self, output: GLIPv2Output, targets: Targets, context: LossContext) -> torch.Tensor:
        logits = output.vqa_logits
        if logits is None:
            raise ValueError("use_vqa needs output.vqa_logits: run the model with heads=['vqa']")
        scores = torch.stack([torch.as_tensor(t["vqa_scores"], dtype=torch.float32) for t in targets])
        scores = scores.to(logits.device)
        if scores.shape != logits.shape:
            raise ValueError(f"vqa_scores must be (B, A) = {tuple(logits.shape)}, got {tuple(scores.shape)}")
        bce = F.binary_cross_entropy_with_logits(logits.float(), scores, reduction="none")
        return bce.sum(dim=1).mean()
