"""The grounding head: boxes and region–word alignment S = O·Pᵀ (detection and phrase grounding).

On the fused O (per level) and P it predicts, per anchor, the box regression, the centerness and
the alignment logits S = O·Pᵀ — the paper's "classification → matching" — and trains them with

* L_loc (official `loss_reg` + `loss_centerness`): GIoU between the decoded boxes of the positive
  anchors and their ground truth, weighted by the centerness targets, plus a binary
  cross-entropy on the predicted centerness;
* L_intra (official `loss_dot_product_token`): a token-level sigmoid focal loss on S.

Anchors are assigned with ATSS (`atss.py`). Deliberate difference from the official code
(microsoft/GLIP `rpn/loss.py`): L_intra's background anchors get an all-zero token target; the
official target puts a 1 in the last slot ("no-object"), which is masked away unless a prompt
fills all 256 slots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from ...utils.distributed import all_reduce_mean
from ..anchors import AnchorGenerator, decode_boxes
from ..fusion import CLAMP
from .atss import ATSSTargets
from .base import HeadInputs, LossContext, Targets, TaskHead

if TYPE_CHECKING:
    from ..config import GLIPv2Config
    from ..outputs import CoreOutput, GLIPv2Output

# GIoU guard against empty unions / enclosures (official value)
GIOU_EPS = 1e-7


class Scale(nn.Module):
    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([value]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class GroundingHead(TaskHead):
    """Dense box and alignment prediction on the fused features (official `VLDyHead`'s output
    layers: `bbox_pred`, `centerness`, `scales`, `dot_product_projection_text`, `log_scale`,
    `bias_lang`, `bias0`, and the unused classic `cls_logits`).

    forward -> `logits` per level (B, H·W, T) = S, `box_regression` per level (B, 4, H, W),
    `centerness` per level (B, 1, H, W), `anchors` per level (H·W, 4), `token_embeddings`
    (B, T, C) the normalised, projected P that S is computed with, and `legacy_cls_logits` on
    request (`return_legacy_logits=True`)."""

    name = "grounding"
    options = ("return_legacy_logits",)

    def __init__(self, config: GLIPv2Config) -> None:
        super().__init__()
        c, d = config.head_channels, config.text_hidden_size
        self.fused_dot_product = config.fused_dot_product
        self.legacy_cls_logits = nn.Conv2d(c, config.legacy_num_classes, 1)  # official, never trained
        self.legacy_cls_logits.requires_grad_(False)  # outside every loss: DDP would wait for its gradient
        self.bbox_pred = nn.Conv2d(c, 4, 1)
        self.centerness = nn.Conv2d(c, 1, 1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(config.num_levels))
        self.token_projection = nn.Linear(d, c)
        self.log_scale = nn.Parameter(torch.tensor([config.log_scale_init]))
        self.bias_lang = nn.Parameter(torch.zeros(d))
        prior_bias = -math.log((1 - config.prior_prob) / config.prior_prob)
        self.bias0 = nn.Parameter(torch.tensor([prior_bias]))
        self.anchor_generator = AnchorGenerator(config.anchor_sizes, config.anchor_strides)
        for conv in (self.legacy_cls_logits, self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.legacy_cls_logits.bias, prior_bias)

    def forward(self, core: CoreOutput, inputs: HeadInputs) -> dict[str, Any]:
        # P when the dot product reads the fused tokens; P̊ with pads zeroed for GLIP-T (A)
        tokens = core.fused_token_features if self.fused_dot_product else core.token_embedded
        tokens = F.normalize(tokens, p=2, dim=-1)
        token_embeddings = self.token_projection(tokens / 2.0)  # (B, T, C)
        token_bias = tokens @ self.bias_lang + self.bias0  # (B, T)
        temperature = self.log_scale.exp()

        logits, box_regression, centerness = [], [], []
        for level, x in enumerate(core.fused_region_features):
            regions = x.flatten(2).transpose(1, 2)  # (B, H·W, C)
            s = regions @ token_embeddings.transpose(1, 2) / temperature + token_bias.unsqueeze(1)
            logits.append(s.clamp(-CLAMP, CLAMP))
            box_regression.append(self.scales[level](self.bbox_pred(x)))
            centerness.append(self.centerness(x))
        legacy = (
            [self.legacy_cls_logits(x) for x in core.fused_region_features]
            if inputs.get("return_legacy_logits", False)
            else None
        )
        anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in core.fused_region_features])
        return {
            "logits": logits,
            "box_regression": box_regression,
            "centerness": centerness,
            "anchors": anchors,
            "token_embeddings": token_embeddings,
            "legacy_cls_logits": legacy,
        }

    # --- losses ----------------------------------------------------------------------------------
    def loss(self, output: GLIPv2Output, targets: Targets, context: LossContext) -> dict[str, torch.Tensor]:
        cfg, flat = context.config, context.flat
        losses: dict[str, torch.Tensor] = {}
        if cfg.use_loc:
            giou, centerness = self.loss_loc(
                flat.box_regression, flat.centerness, flat.anchors, context.assignments, context.num_pos
            )
            losses["loss_giou"] = cfg.giou_weight * giou
            losses["loss_centerness"] = cfg.centerness_weight * centerness
        if cfg.use_intra:
            losses["loss_intra"] = cfg.intra_weight * self.loss_intra(
                flat.logits,
                output.text_attention_mask,
                context.assignments,
                targets,
                context.num_pos,
                cfg.focal_alpha,
                cfg.focal_gamma,
            )
        return losses

    def loss_loc(
        self,
        box_regression: torch.Tensor,
        centerness: torch.Tensor,
        anchors: torch.Tensor,
        assignments: Sequence[ATSSTargets],
        num_pos: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L_loc, unweighted: (GIoU loss, centerness loss).

        box_regression: (B, A, 4) deltas; centerness: (B, A) logits; anchors: (A, 4);
        num_pos: 0-d, positives per rank (averaged over ranks, >= 1).
        GIoU: Σ_pos centerness_target · (1 - GIoU(decoded box, gt)) / Σ_pos centerness_target, the
        denominator averaged over ranks (official); centerness: Σ_pos BCE / num_pos."""
        positive = torch.stack([a.positive for a in assignments])  # (B, A)
        deltas = box_regression[positive]
        pred_centerness = centerness[positive]
        reg_targets = torch.stack([a.regression_targets for a in assignments])[positive]
        ctr_targets = torch.stack([a.centerness_targets for a in assignments])[positive]
        pos_anchors = anchors.expand(positive.shape[0], -1, -1)[positive]
        # a collective: every rank must enter it, with or without positives of its own
        ctr_norm = all_reduce_mean(ctr_targets.sum())
        if deltas.shape[0] == 0:
            # empty sums: 0, but connected to the graph so every parameter still gets a gradient
            return deltas.sum(), pred_centerness.sum()
        # the ground truth is recovered by decoding its encoding, as official (same clamp of dw, dh)
        per_box = generalized_iou_loss(
            decode_boxes(deltas, pos_anchors), decode_boxes(reg_targets, pos_anchors)
        )
        giou = (per_box * ctr_targets).sum() / ctr_norm
        bce = F.binary_cross_entropy_with_logits(pred_centerness, ctr_targets, reduction="sum") / num_pos
        return giou, bce

    def loss_intra(
        self,
        logits: torch.Tensor,
        text_attention_mask: torch.Tensor,
        assignments: Sequence[ATSSTargets],
        targets: Targets,
        num_pos: torch.Tensor,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> torch.Tensor:
        """L_intra, unweighted: sigmoid focal loss on S = O·Pᵀ.

        logits: (B, A, T) all levels; text_attention_mask: (B, T).
        Target (B, A, T): the positive-map row of the assigned box for positive anchors, zeros for
        background anchors — *no* "no-object" 1 in the last slot (the official target has one, which
        only matters when a prompt fills all T slots; it is otherwise a padding slot and masked).
        Summed over real tokens of every anchor, divided by num_pos."""
        target = torch.zeros_like(logits)
        for b, (a, t) in enumerate(zip(assignments, targets)):
            positive = a.positive
            target[b, positive] = t["positive_map"][a.matched_gt[positive]]
        per_pair = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none")
        real = text_attention_mask.to(logits.device).bool()[:, None, :]
        return torch.where(real, per_pair, torch.zeros_like(per_pair)).sum() / num_pos

    @torch.no_grad()
    def token_accuracy(
        self,
        logits: torch.Tensor,
        text_attention_mask: torch.Tensor,
        assignments: Sequence[ATSSTargets],
        targets: Sequence[dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        """Share of the positive anchors whose highest-scoring phrase token lies in their own box's
        phrase (detectron2's `fg_cls_accuracy`, for S). L_intra can fall while S only says "an
        object is here" and ranks every word alike; this number stays near 1 / (phrases in the
        prompt) until S tells the phrases apart.

        logits: (B, A, T); text_attention_mask: (B, T). Candidates are the tokens of any phrase of
        the prompt (`token_labels` >= 0, so not "." or [CLS]) when the target has `token_labels`,
        else every real token. Returns a 0-d tensor, 0 without positives."""
        real = text_attention_mask.to(logits.device).bool()
        hits, total = 0, 0
        for b, (a, t) in enumerate(zip(assignments, targets)):
            anchors = a.positive.nonzero().flatten()
            if anchors.numel() == 0:
                continue
            candidates = real[b] & (t["token_labels"] >= 0) if "token_labels" in t else real[b]
            best = logits[b, anchors].masked_fill(~candidates, float("-inf")).argmax(-1)  # (P,)
            rows = t["positive_map"][a.matched_gt[anchors]]  # (P, T)
            hits += int((rows.gather(1, best[:, None]) > 0).sum())
            total += anchors.numel()
        return torch.tensor(hits / total if total else 0.0, device=logits.device)


def generalized_iou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, 4), (N, 4) xyxy -> (N,) 1 - GIoU, as the official ATSS `GIoULoss`: areas without the +1
    pixel, a predicted box with x2 < x1 (y2 < y1) collapsed to zero width (height), and 1e-7 added
    to the union and the enclosing area."""
    px1, py1 = pred[:, 0], pred[:, 1]
    px2, py2 = torch.max(px1, pred[:, 2]), torch.max(py1, pred[:, 3])
    tx1, ty1, tx2, ty2 = target.unbind(dim=1)
    pred_area = (px2 - px1) * (py2 - py1)
    target_area = (tx2 - tx1) * (ty2 - ty1)
    iw = torch.min(px2, tx2) - torch.max(px1, tx1)
    ih = torch.min(py2, ty2) - torch.max(py1, ty1)
    inter = torch.where((iw > 0) & (ih > 0), iw * ih, torch.zeros_like(iw))
    enclosing = (torch.max(px2, tx2) - torch.min(px1, tx1)) * (
        torch.max(py2, ty2) - torch.min(py1, ty1)
    ) + GIOU_EPS
    union = pred_area + target_area - inter + GIOU_EPS
    giou = inter / union - (enclosing - union) / enclosing
    return 1.0 - giou
