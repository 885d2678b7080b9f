"""The GLIPv2 training objective: the sum over the active heads' losses (DETR's loss map).

    L = L_loc + L_intra (grounding head) + L_inter + L_mlm + L_mask (+ any registered head's)

over the heads that ran: a detection / grounding batch runs the localisation heads, a VQA batch
the VQA head (L_vqa), a caption batch the caption head (L_caption).

The criterion prepares the targets (checked, on the device, token maps fitted to T slots), runs
the ATSS assignment once — the grounding head's anchors serve L_loc, L_intra and L_inter — and
asks each head for its weighted losses. Losses are normalised by the number of positive anchors
averaged over ranks (as the official code), so that DDP's gradient averaging gives the loss of
the global batch. The model calls it inside its `forward` (train mode with targets), so every
parameter is used inside the DDP-wrapped forward.

Targets, one dict per image (boxes in the model's input frame, i.e. the resized, unpadded image;
T = the number of token slots of the output):

    boxes:        (N, 4) float xyxy
    positive_map: (N, T) float / bool, the token slots of each box's phrase (binarised: > 0)
    labels:       (N,) long, the global label / phrase identity of each box (for L_inter)
    token_labels: (T,) long, the same identity for each token slot, -1 for none (for L_inter;
                  optional otherwise, narrows `token_accuracy` to phrase tokens)
    mlm_labels:   (T,) long, optional: original ids of the masked tokens, -100 elsewhere
    masks:        (N, h, w) bool / uint8, optional: each box's instance mask in the same frame
                  (for L_mask; images without it add nothing to L_mask)

A VQA target is {"vqa_scores": (A,)}, a caption target {"caption_labels": (T,)} (see those heads).

Maps shorter than T are padded (zeros, -1, -100); longer ones are cut when the extra slots are
empty. An image may have no boxes (all anchors are background).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..utils import distributed
from .heads.atss import ATSSTargets, atss_assign
from .heads.base import FlatOutputs, LossConfig, LossContext, Targets, TaskHead, fit_slots
from .heads.grounding import GroundingHead
from .outputs import GLIPv2Output


class GLIPv2Criterion(nn.Module):
    """`forward(output, targets)` returns every enabled, weighted loss — `loss_giou`,
    `loss_centerness` (together L_loc), `loss_intra`, `loss_inter`, `loss_mlm`, `loss_mask`, and
    those of registered heads — and `loss`, their sum, plus `token_accuracy`, a diagnostic
    without gradient (`GroundingHead.token_accuracy`).

    heads: the model's heads by name (referenced, not registered here: they are saved once, with
    the model)."""

    def __init__(self, config: LossConfig, heads: Mapping[str, TaskHead]) -> None:
        super().__init__()
        self.config = config
        if "grounding" not in heads or not isinstance(heads["grounding"], GroundingHead):
            raise ValueError("the GLIPv2 losses need the grounding head (its anchors and ATSS assignment)")
        if config.use_inter and "inter" not in heads:
            raise ValueError(
                "use_inter needs a model with a region-word contrastive projection "
                "(GLIPv2Config.region_word_contrastive_dim > 0)"
            )
        if config.use_mlm and "mlm" not in heads:
            raise ValueError("use_mlm needs a model with an MLM head (GLIPv2Config.mlm_head)")
        if config.use_mask and "mask" not in heads:
            raise ValueError("use_mask needs a model with a mask head (GLIPv2Config.mask_head)")
        if config.use_vqa and "vqa" not in heads:
            raise ValueError("use_vqa needs a model with an answer vocabulary (GLIPv2Config.vqa_answers)")
        if config.use_caption and "caption" not in heads:
            raise ValueError("use_caption needs a model with a caption head (GLIPv2Config.caption_head)")
        # a plain tuple keeps nn.Module from registering the heads' parameters a second time
        self._heads: tuple[dict[str, TaskHead]] = (dict(heads),)

    @property
    def heads(self) -> dict[str, TaskHead]:
        return self._heads[0]

    def forward(
        self, output: GLIPv2Output, targets: Targets, ran: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """ran: the heads that ran in this forward (default: all); only their losses are summed. A
        batch without the grounding head (VQA, captions: `heads=["vqa"]`) has no boxes, no ATSS
        and no `token_accuracy`."""
        ran = list(self.heads) if ran is None else list(ran)
        if "grounding" not in ran:
            return self._without_grounding(output, targets, ran)
        if output.logits is None:
            raise ValueError("the losses need the grounding head's outputs (it did not run)")
        flat = FlatOutputs.from_output(output)
        batch, _, num_tokens = flat.logits.shape
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch} images")
        device = flat.logits.device
        prepared = [self.prepare_target(t, num_tokens, device, i) for i, t in enumerate(targets)]

        assignments = self.assign(flat.anchors, flat.num_anchors_per_level, prepared)
        # official normaliser: positives averaged over ranks, at least 1 (zero-GT batches)
        num_pos = distributed.all_reduce_mean(sum(a.num_positive for a in assignments), device).clamp(min=1.0)
        context = LossContext(self.config, flat, assignments, num_pos)

        losses = self._sum(output, prepared, context, ran)
        # a diagnostic beside the losses, without gradient (logged by the trainer)
        grounding = self.heads["grounding"]
        losses["token_accuracy"] = grounding.token_accuracy(
            flat.logits, output.text_attention_mask, assignments, prepared
        )
        return losses

    def _without_grounding(
        self, output: GLIPv2Output, targets: Targets, ran: list[str]
    ) -> dict[str, torch.Tensor]:
        prepared = [dict(t) for t in targets]
        batch = output.fused_token_features.shape[0]
        if len(prepared) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch}")
        return self._sum(output, prepared, LossContext(self.config), ran)

    def _sum(
        self, output: GLIPv2Output, prepared: Targets, context: LossContext, ran: list[str]
    ) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():
            if name not in ran:
                continue
            for key, value in head.loss(output, prepared, context).items():
                if key in losses:
                    raise ValueError(f"head {name!r} returns {key!r}, which another head returns too")
                losses[key] = value * self.config.extra_weights.get(key, 1.0)
        if not losses:
            raise ValueError(f"every loss of the heads that ran ({', '.join(ran)}) is switched off")
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses

    def assign(
        self, anchors: torch.Tensor, num_anchors_per_level: Sequence[int], targets: Targets
    ) -> list[ATSSTargets]:
        """ATSS per image: anchors (A, 4) of all levels, shared by the batch (one padded size)."""
        return [
            atss_assign(anchors, num_anchors_per_level, t["boxes"], self.config.atss_topk) for t in targets
        ]

    def prepare_target(
        self, target: dict[str, torch.Tensor], num_tokens: int, device: torch.device, index: int
    ) -> dict[str, torch.Tensor]:
        """Check one target dict, move it to `device` and fit the token maps to T slots; each head
        adds the entries its loss needs."""
        for key in ("boxes", "positive_map"):
            if key not in target:
                raise ValueError(f"target {index} has no {key!r}")
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        num_boxes = boxes.shape[0]
        positive_map = torch.as_tensor(target["positive_map"], device=device)
        if num_boxes == 0 and positive_map.numel() == 0:
            positive_map = positive_map.new_zeros((0, num_tokens))
        if positive_map.ndim != 2 or positive_map.shape[0] != num_boxes:
            raise ValueError(
                f"target {index}: positive_map must be (N={num_boxes}, T), got {tuple(positive_map.shape)}"
            )
        out = {
            "boxes": boxes,
            "positive_map": fit_slots(
                positive_map.float() > 0, num_tokens, False, f"target {index} positive_map"
            ).float(),
        }
        if "token_labels" in target:  # L_inter's positives; also `token_accuracy`'s candidate tokens
            token_labels = torch.as_tensor(target["token_labels"], dtype=torch.long, device=device).reshape(
                -1
            )
            out["token_labels"] = fit_slots(token_labels, num_tokens, -1, f"target {index} token_labels")
        for head in self.heads.values():
            head.prepare_target(target, out, num_tokens, self.config, index)
        return out
