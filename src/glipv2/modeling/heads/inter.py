"""L_inter: GLIPv2's inter-image region–word contrastive loss, on the pre-fusion O̊ and P̊.

The pre-fusion O̊ at positive anchors and P̊ are projected, L2-normalised and all-gathered; every
region is contrasted with every real token of the global batch, and vice versa (official
"shallow contrastive" loss of GLIP's ATSS loss evaluator).

Deliberate differences from the official code (microsoft/GLIP `rpn/loss.py`):
* regions: every positive anchor may be picked; the official list of positives is built with
  `nonzero()` on the matched box index and so silently drops the anchors of box 0;
* padding: the official code pads every image's regions to the same count with random background
  anchors (extra negatives) or zeros, and the text to 256 slots with a -1e6 mask, to all-gather
  equal shapes; here variable-length gathers leave padding out altogether;
* distribution: every rank evaluates the whole global loss with gradients through its own
  embeddings (scaled by the world size, see `loss_inter`), so after DDP's averaging the gradients
  equal the single-process ones. The official code evaluates only its own rows, so the gradients
  of the other ranks' rows never reach its embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ...utils import distributed
from .atss import ATSSTargets
from .base import HeadInputs, LossConfig, LossContext, Targets, TaskHead

if TYPE_CHECKING:
    from ..config import GLIPv2Config
    from ..outputs import CoreOutput, GLIPv2Output


class RegionWordContrastiveHead(TaskHead):
    """Projections of the pre-fusion O̊ and P̊ into a shared space for L_inter, with a learnable
    temperature (official `shallow_contrastive_projection_{image,text}`, `shallow_log_scale`).
    It has no inference output: only a loss."""

    name = "inter"
    loss_key = "inter"

    def __init__(self, config: GLIPv2Config) -> None:
        super().__init__()
        dim = config.region_word_contrastive_dim
        self.region = nn.Linear(config.fpn_channels, dim)
        self.token = nn.Linear(config.text_hidden_size, dim)
        self.log_scale = nn.Parameter(torch.full((1,), float(config.region_word_contrastive_log_scale_init)))

    loss_runs_with = "grounding"

    def wanted(self, inputs: HeadInputs) -> bool:
        return False  # nothing to predict; the loss reads O̊ and P̊ from the output

    def forward(self, core: CoreOutput, inputs: HeadInputs) -> dict[str, Any]:
        return {}

    def unweighted_loss(self, output: GLIPv2Output, targets: Targets, context: LossContext) -> torch.Tensor:
        return self.loss_inter(
            output.region_features,
            output.token_features,
            output.text_attention_mask,
            context.assignments,
            targets,
            context.num_pos,
            context.config.inter_max_regions,
        )

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
        for key in ("labels", "token_labels"):
            if key not in target:
                raise ValueError(f"target {index} has no {key!r} (needed by L_inter)")
        labels = torch.as_tensor(target["labels"], dtype=torch.long, device=prepared["boxes"].device).reshape(
            -1
        )
        if labels.shape[0] != prepared["boxes"].shape[0]:
            raise ValueError(
                f"target {index}: {labels.shape[0]} labels for {prepared['boxes'].shape[0]} boxes"
            )
        prepared["labels"] = labels

    def loss_inter(
        self,
        region_features: Sequence[torch.Tensor],
        token_features: torch.Tensor,
        text_attention_mask: torch.Tensor,
        assignments: Sequence[ATSSTargets],
        targets: Targets,
        num_pos: torch.Tensor,
        max_regions: int = 100,
    ) -> torch.Tensor:
        """L_inter, unweighted: the inter-image region–word contrastive loss.

        region_features: O̊ per level (B, C, H, W); token_features: P̊ (B, T, D);
        text_attention_mask: (B, T); num_pos: 0-d positives per rank (averaged, >= 1).

        Regions: O̊ at the positive anchors (at most `inter_max_regions` per image, sampled);
        tokens: the real tokens of P̊ (L2-normalised first, as the official text input). Both are
        projected, L2-normalised and gathered from all ranks; logits = region · token / exp(log_scale).
        A (region, token) pair is positive when both come from the same image and the token is in
        the region's box phrase (positive map), or when they come from different images and carry
        the same label (box `labels` == `token_labels` >= 0). The loss is the soft-target
        cross-entropy (targets normalised per row, rows without positives skipped), summed over
        the rows, the region→token and token→region sums averaged, divided by the number of
        positive anchors of the global batch (all of them, not only the sampled ones; official).

        Each rank evaluates the loss of the whole global batch (identical on all ranks), with
        gradients through its own regions and tokens only. DDP averages gradients over the W ranks,
        so the gradient reaching this rank's embeddings is scaled by W first: after averaging,
        every parameter — the projections and, unscaled, the shared temperature — receives exactly
        the gradient of the single-process loss over the global batch."""

        world, rank = distributed.get_world_size(), distributed.get_rank()
        device = token_features.device
        batch, num_tokens = text_attention_mask.shape
        batch_sizes = distributed.all_gather_sizes(batch, device)
        slots = max(distributed.all_gather_sizes(num_tokens, device))
        image_offset = sum(batch_sizes[:rank])  # global index of this rank's first image

        # regions of this rank: O̊ at (a sample of) the positive anchors
        feats, region_info = [], []
        for b, (a, t) in enumerate(zip(assignments, targets)):
            anchor_idx = a.positive.nonzero().squeeze(1)
            if anchor_idx.numel() > max_regions:
                keep = torch.randperm(anchor_idx.numel(), device=anchor_idx.device)[:max_regions]
                anchor_idx = anchor_idx[keep].sort().values
            gt = a.matched_gt[anchor_idx]
            feats.append(_rows_at(region_features, b, anchor_idx))
            own_row = F.pad((t["positive_map"][gt] > 0).long(), (0, slots - num_tokens))  # (n, slots)
            ids = torch.stack([torch.full_like(gt, image_offset + b), t["labels"][gt]], dim=1)
            region_info.append(torch.cat([ids, own_row], dim=1))
        regions = torch.cat(feats, dim=0).float()
        region_info_local = torch.cat(region_info, dim=0)  # (R, 2 + slots): image, label, positive row

        # tokens of this rank: the real tokens of P̊
        real = text_attention_mask.to(device).bool()
        image_idx, token_pos = real.nonzero(as_tuple=True)
        tokens = F.normalize(token_features.float()[image_idx, token_pos], dim=-1)
        token_labels = torch.stack([t["token_labels"] for t in targets])[image_idx, token_pos]
        token_info_local = torch.stack([image_idx + image_offset, token_labels, token_pos], dim=1)  # (K, 3)

        region_emb = F.normalize(self.region(regions), dim=-1)
        token_emb = F.normalize(self.token(tokens), dim=-1)
        # the W-fold gradient compensates DDP's averaging of a loss every rank computes in full
        all_regions, _ = distributed.all_gather_varlen(distributed.scale_gradient(region_emb, world))
        all_tokens, _ = distributed.all_gather_varlen(distributed.scale_gradient(token_emb, world))
        region_info_all, _ = distributed.all_gather_varlen(region_info_local)
        token_info_all, _ = distributed.all_gather_varlen(token_info_local)
        if all_regions.shape[0] == 0 or all_tokens.shape[0] == 0:
            # nothing to contrast anywhere: a zero that still reaches the projections
            return (region_emb.sum() + token_emb.sum() + self.log_scale.sum()) * 0.0

        region_image, region_label, own_rows = (
            region_info_all[:, 0],
            region_info_all[:, 1],
            region_info_all[:, 2:],
        )
        token_image, token_label, token_slot = (
            token_info_all[:, 0],
            token_info_all[:, 1],
            token_info_all[:, 2],
        )
        same_image = region_image[:, None] == token_image[None, :]
        in_phrase = own_rows[:, token_slot] > 0  # (R, K): the token's slot in the region's own row
        same_label = (region_label[:, None] == token_label[None, :]) & (token_label[None, :] >= 0)
        positive = torch.where(same_image, in_phrase, same_label)

        logits = all_regions @ all_tokens.t() / self.log_scale.exp()
        region_to_token = _soft_cross_entropy(logits, positive)
        token_to_region = _soft_cross_entropy(logits.t(), positive.t())
        # official: each rank divides its own rows by num_pos; the mean over ranks of that is the
        # global sum divided by W·num_pos, which is what every rank computes here
        return (region_to_token + token_to_region) / 2 / (num_pos * world)


def _soft_cross_entropy(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Σ over rows with a positive of -Σ_j target_ij · log_softmax(logits_i)_j, where target_i is
    row i of `positive` normalised to sum 1. logits, positive: (N, M)."""
    has_positive = positive.any(dim=1)
    rows, pos = logits[has_positive], positive[has_positive].float()
    return F.cross_entropy(rows, pos / pos.sum(dim=1, keepdim=True), reduction="sum")


def _rows_at(levels: Sequence[torch.Tensor], image: int, anchor_idx: torch.Tensor) -> torch.Tensor:
    """Features (n, C) of image `image` at the ascending flat anchor indices `anchor_idx` (levels
    concatenated, row-major), from per-level maps (B, C, H, W) — without flattening whole maps."""
    rows, start = [], 0
    for level in levels:
        count = level.shape[-2] * level.shape[-1]
        inside = anchor_idx[(anchor_idx >= start) & (anchor_idx < start + count)] - start
        rows.append(level[image].flatten(1)[:, inside].t())
        start += count
    return torch.cat(rows, dim=0)
