"""The GLIPv2 training losses.

    L = L_loc + L_intra + L_inter + L_mlm (+ L_mask)

* L_loc (box localisation, official `loss_reg` + `loss_centerness`): GIoU between the decoded
  boxes of the positive anchors and their ground truth, weighted by the centerness targets, plus
  a binary cross-entropy on the predicted centerness.
* L_intra (intra-image region–word alignment, official `loss_dot_product_token`): a token-level
  sigmoid focal loss on S = O·Pᵀ (the fused region × fused token logits of `GLIPv2Output.logits`).
* L_inter (inter-image region–word contrastive loss, official "shallow contrastive"): the
  pre-fusion O̊ at positive anchors and P̊ are projected, L2-normalised and all-gathered; every
  region is contrasted with every real token of the global batch, and vice versa.
* L_mlm (masked language modelling): cross-entropy of the MLM head on the corrupted tokens.
* L_mask (segmentation, official `loss_mask` of the language-aware mask head): per-pixel binary
  cross-entropy of the mask logits of each ground-truth box's phrase against its instance mask.

Anchors are assigned with ATSS (`atss.py`). Losses are normalised by the number of positive
anchors averaged over ranks (as the official code), so that DDP's gradient averaging gives the
loss of the global batch.

Deliberate differences from the official code (microsoft/GLIP `rpn/loss.py`):
* L_intra: background anchors get an all-zero token target; the official target puts a 1 in the
  last slot ("no-object"), which is masked away unless a prompt fills all 256 slots.
* L_inter regions: every positive anchor may be picked; the official list of positives is built
  with `nonzero()` on the matched box index and so silently drops the anchors of box 0.
* L_inter padding: the official code pads every image's regions to the same count with random
  background anchors (extra negatives) or zeros, and the text to 256 slots with a -1e6 mask, to
  all-gather equal shapes; here variable-length gathers leave padding out altogether, which is
  what the masks compute.
* L_inter distribution: every rank evaluates the whole global loss with gradients through its
  own embeddings (scaled by the world size, see `loss_inter`), so after DDP's averaging the
  gradients equal the single-process ones. The official code evaluates only its own rows, so
  the gradients of the other ranks' rows never reach its embeddings.
* L_mask: the mask head sees the ground-truth boxes; the official one sees the detector's
  proposals that match a ground truth (a one-stage detector has no proposal stage to share).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align, sigmoid_focal_loss

from ..modeling.anchors import decode_boxes
from ..modeling.outputs import GLIPv2Output
from . import distributed
from .atss import ATSS_TOPK, ATSSTargets, atss_assign
from .mlm import IGNORE_INDEX

# GIoU guard against empty unions / enclosures (official value)
GIOU_EPS = 1e-7


@dataclass
class LossConfig:
    """Weights and switches of the GLIPv2 losses (official yacs key in the comments, `MODEL.`
    dropped). Defaults: the official values; L_inter and L_mlm are off as in the official
    defaults — `for_model` switches them on when the model has the needed heads."""

    # L_loc
    use_loc: bool = True
    giou_weight: float = 2.0  # ATSS.REG_LOSS_WEIGHT
    centerness_weight: float = 1.0  # (official: unweighted)
    # L_intra
    use_intra: bool = True  # DYHEAD.FUSE_CONFIG.USE_DOT_PRODUCT_TOKEN_LOSS
    intra_weight: float = 1.0  # DYHEAD.FUSE_CONFIG.DOT_PRODUCT_TOKEN_LOSS_WEIGHT
    focal_alpha: float = 0.25  # DYHEAD.FUSE_CONFIG.TOKEN_ALPHA
    focal_gamma: float = 2.0  # DYHEAD.FUSE_CONFIG.TOKEN_GAMMA
    # L_inter
    use_inter: bool = False  # DYHEAD.FUSE_CONFIG.USE_SHALLOW_CONTRASTIVE_LOSS
    inter_weight: float = 1.0  # DYHEAD.FUSE_CONFIG.SHALLOW_CONTRASTIVE_LOSS_WEIGHT
    inter_max_regions: int = 100  # DYHEAD.FUSE_CONFIG.SHALLOW_MAX_POSITIVE_ANCHORS, per image
    # L_mlm
    use_mlm: bool = False  # DYHEAD.FUSE_CONFIG.MLM_LOSS
    mlm_weight: float = 1.0  # DYHEAD.FUSE_CONFIG.MLM_LOSS_COEF
    # L_mask (language-aware mask head)
    use_mask: bool = False  # MASK_ON
    mask_weight: float = 1.0  # (official: unweighted `loss_mask`)
    # ATSS
    atss_topk: int = ATSS_TOPK  # ATSS.TOPK (× anchors per location, 1 here)

    def __post_init__(self) -> None:
        problems = [f"{f.name} must be >= 0" for f in dataclasses.fields(self)
                    if f.name.endswith("_weight") and getattr(self, f.name) < 0]
        if self.atss_topk < 1:
            problems.append("atss_topk must be >= 1")
        if self.inter_max_regions < 1:
            problems.append("inter_max_regions must be >= 1")
        if problems:
            raise ValueError("invalid LossConfig: " + "; ".join(problems))

    @classmethod
    def for_model(cls, model_config: Any, **overrides: Any) -> LossConfig:
        """The official defaults, with L_inter on when the `GLIPv2Config` has a region–word
        contrastive projection, L_mlm on when it has an MLM head and L_mask when it has a mask head."""
        switches = {"use_inter": bool(getattr(model_config, "region_word_contrastive_dim", 0)),
                    "use_mlm": bool(getattr(model_config, "mlm_head", False)),
                    "use_mask": bool(getattr(model_config, "mask_head", False))}
        return cls(**{**switches, **overrides})


@dataclass
class FlatOutputs:
    """The dense outputs with all levels concatenated (P3 first, row-major inside a level).

    logits: (B, A, T); box_regression: (B, A, 4); centerness: (B, A) logits;
    anchors: (A, 4); num_anchors_per_level: A_l, summing to A."""

    logits: torch.Tensor
    box_regression: torch.Tensor
    centerness: torch.Tensor
    anchors: torch.Tensor
    num_anchors_per_level: list[int]

    @classmethod
    def from_output(cls, output: GLIPv2Output) -> FlatOutputs:
        counts = [a.shape[0] for a in output.anchors]
        for level, (s, b, c, n) in enumerate(zip(output.logits, output.box_regression, output.centerness, counts)):
            if s.shape[1] != n or b.shape[-2] * b.shape[-1] != n or c.shape[-2] * c.shape[-1] != n:
                raise ValueError(f"level {level}: logits, box_regression and centerness do not match its "
                                 f"{n} anchors")
        batch = output.logits[0].shape[0]
        # the losses run in float32 whatever the autocast dtype (official `custom_fwd(cast_inputs=float32)`)
        return cls(
            logits=torch.cat(output.logits, dim=1).float(),
            box_regression=torch.cat([b.permute(0, 2, 3, 1).reshape(batch, -1, 4) for b in output.box_regression],
                                     dim=1).float(),
            centerness=torch.cat([c.reshape(batch, -1) for c in output.centerness], dim=1).float(),
            anchors=torch.cat(output.anchors, dim=0).float(),
            num_anchors_per_level=counts,
        )


class GLIPv2Criterion(nn.Module):
    """GLIPv2's training objective on a `GLIPv2Output`.

    `forward(output, targets)` returns every enabled, weighted loss — `loss_giou`,
    `loss_centerness` (together L_loc), `loss_intra`, `loss_inter`, `loss_mlm`, `loss_mask` — and `loss`, their
    sum — plus `token_accuracy`, a diagnostic without gradient (see that method). Targets, one
    dict per image (boxes in the model's input frame, i.e. the resized, unpadded image; T = the
    number of token slots of the output):

        boxes:        (N, 4) float xyxy
        positive_map: (N, T) float / bool, the token slots of each box's phrase (binarised: > 0)
        labels:       (N,) long, the global label / phrase identity of each box (for L_inter)
        token_labels: (T,) long, the same identity for each token slot, -1 for none (for L_inter;
                      optional otherwise, narrows `token_accuracy` to phrase tokens)
        mlm_labels:   (T,) long, optional: original ids of the masked tokens, -100 elsewhere
        masks:        (N, h, w) bool / uint8, optional: each box's instance mask in the same frame
                      (for L_mask; images without it add nothing to L_mask)

    Maps shorter than T are padded (zeros, -1, -100); longer ones are cut when the extra slots
    are empty. An image may have no boxes (all anchors are background).

    The L_inter projections and temperature are the model's own
    (`model.region_word_contrastive`); the criterion only references them, so they are neither
    registered here nor saved twice. Under DDP they are used outside the wrapped forward, so wrap
    the model without `find_unused_parameters` (their gradients arrive in the same backward), and
    average gradients over ranks (DDP's default): L_inter relies on it.
    """

    def __init__(self, config: LossConfig, model: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        if isinstance(getattr(model, "module", None), nn.Module):  # DistributedDataParallel wrapper
            model = model.module
        projection = getattr(model, "region_word_contrastive", None) if model is not None else None
        if config.use_inter and projection is None:
            raise ValueError("use_inter needs a model with a region-word contrastive projection "
                             "(GLIPv2Config.region_word_contrastive_dim > 0)")
        # a plain tuple keeps nn.Module from registering the model's parameters here
        self._projection: tuple[nn.Module | None] = (projection,)

    @property
    def region_word_contrastive(self) -> nn.Module:
        projection = self._projection[0]
        if projection is None:
            raise ValueError("this criterion has no region-word contrastive projection")
        return projection

    # ------------------------------------------------------------------------------------------
    def forward(self, output: GLIPv2Output, targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        cfg = self.config
        flat = FlatOutputs.from_output(output)
        batch, _, num_tokens = flat.logits.shape
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch} images")
        device = flat.logits.device
        prepared = [self._prepare_target(t, num_tokens, device, i) for i, t in enumerate(targets)]

        assignments = self.assign(flat.anchors, flat.num_anchors_per_level, prepared)
        # official normaliser: positives averaged over ranks, at least 1 (zero-GT batches)
        num_pos = distributed.all_reduce_mean(sum(a.num_positive for a in assignments), device).clamp(min=1.0)

        losses: dict[str, torch.Tensor] = {}
        if cfg.use_loc:
            giou, centerness = self.loss_loc(flat.box_regression, flat.centerness, flat.anchors, assignments, num_pos)
            losses["loss_giou"] = cfg.giou_weight * giou
            losses["loss_centerness"] = cfg.centerness_weight * centerness
        if cfg.use_intra:
            losses["loss_intra"] = cfg.intra_weight * self.loss_intra(
                flat.logits, output.text_attention_mask, assignments, prepared, num_pos)
        if cfg.use_inter:
            losses["loss_inter"] = cfg.inter_weight * self.loss_inter(
                output.region_features, output.token_features, output.text_attention_mask, assignments,
                prepared, num_pos)
        if cfg.use_mlm:
            losses["loss_mlm"] = cfg.mlm_weight * self.loss_mlm(output.mlm_logits, prepared)
        if cfg.use_mask:
            losses["loss_mask"] = cfg.mask_weight * self.loss_mask(output.mask_logits, prepared)
        if not losses:
            raise ValueError("every loss is switched off in the LossConfig")
        losses["loss"] = torch.stack(list(losses.values())).sum()
        # a diagnostic beside the losses, without gradient (logged by the trainer)
        losses["token_accuracy"] = self.token_accuracy(flat.logits, output.text_attention_mask, assignments, prepared)
        return losses

    def assign(self, anchors: torch.Tensor, num_anchors_per_level: Sequence[int],
               targets: Sequence[dict[str, torch.Tensor]]) -> list[ATSSTargets]:
        """ATSS per image: anchors (A, 4) of all levels, shared by the batch (one padded size)."""
        return [atss_assign(anchors, num_anchors_per_level, t["boxes"], self.config.atss_topk) for t in targets]

    # --- L_loc -----------------------------------------------------------------------------------
    def loss_loc(self, box_regression: torch.Tensor, centerness: torch.Tensor, anchors: torch.Tensor,
                 assignments: Sequence[ATSSTargets], num_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        ctr_norm = distributed.all_reduce_mean(ctr_targets.sum())
        if deltas.shape[0] == 0:
            # empty sums: 0, but connected to the graph so every parameter still gets a gradient
            return deltas.sum(), pred_centerness.sum()
        # the ground truth is recovered by decoding its encoding, as official (same clamp of dw, dh)
        per_box = generalized_iou_loss(decode_boxes(deltas, pos_anchors), decode_boxes(reg_targets, pos_anchors))
        giou = (per_box * ctr_targets).sum() / ctr_norm
        bce = F.binary_cross_entropy_with_logits(pred_centerness, ctr_targets, reduction="sum") / num_pos
        return giou, bce

    # --- L_intra ---------------------------------------------------------------------------------
    def loss_intra(self, logits: torch.Tensor, text_attention_mask: torch.Tensor,
                   assignments: Sequence[ATSSTargets], targets: Sequence[dict[str, torch.Tensor]],
                   num_pos: torch.Tensor) -> torch.Tensor:
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
        per_pair = sigmoid_focal_loss(logits, target, alpha=self.config.focal_alpha,
                                      gamma=self.config.focal_gamma, reduction="none")
        real = text_attention_mask.to(logits.device).bool()[:, None, :]
        return torch.where(real, per_pair, torch.zeros_like(per_pair)).sum() / num_pos

    @torch.no_grad()
    def token_accuracy(self, logits: torch.Tensor, text_attention_mask: torch.Tensor,
                       assignments: Sequence[ATSSTargets], targets: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
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

    # --- L_inter ---------------------------------------------------------------------------------
    def loss_inter(self, region_features: Sequence[torch.Tensor], token_features: torch.Tensor,
                   text_attention_mask: torch.Tensor, assignments: Sequence[ATSSTargets],
                   targets: Sequence[dict[str, torch.Tensor]], num_pos: torch.Tensor) -> torch.Tensor:
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
        projection = self.region_word_contrastive
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
            if anchor_idx.numel() > self.config.inter_max_regions:
                keep = torch.randperm(anchor_idx.numel(), device=anchor_idx.device)[: self.config.inter_max_regions]
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

        region_emb = F.normalize(projection.region(regions), dim=-1)
        token_emb = F.normalize(projection.token(tokens), dim=-1)
        # the W-fold gradient compensates DDP's averaging of a loss every rank computes in full
        all_regions, _ = distributed.all_gather_varlen(distributed.scale_gradient(region_emb, world))
        all_tokens, _ = distributed.all_gather_varlen(distributed.scale_gradient(token_emb, world))
        region_info_all, _ = distributed.all_gather_varlen(region_info_local)
        token_info_all, _ = distributed.all_gather_varlen(token_info_local)
        if all_regions.shape[0] == 0 or all_tokens.shape[0] == 0:
            # nothing to contrast anywhere: a zero that still reaches the projections
            return (region_emb.sum() + token_emb.sum() + projection.log_scale.sum()) * 0.0

        region_image, region_label, own_rows = region_info_all[:, 0], region_info_all[:, 1], region_info_all[:, 2:]
        token_image, token_label, token_slot = token_info_all[:, 0], token_info_all[:, 1], token_info_all[:, 2]
        same_image = region_image[:, None] == token_image[None, :]
        in_phrase = own_rows[:, token_slot] > 0  # (R, K): the token's slot in the region's own row
        same_label = (region_label[:, None] == token_label[None, :]) & (token_label[None, :] >= 0)
        positive = torch.where(same_image, in_phrase, same_label)

        logits = all_regions @ all_tokens.t() / projection.log_scale.exp()
        region_to_token = _soft_cross_entropy(logits, positive)
        token_to_region = _soft_cross_entropy(logits.t(), positive.t())
        # official: each rank divides its own rows by num_pos; the mean over ranks of that is the
        # global sum divided by W·num_pos, which is what every rank computes here
        return (region_to_token + token_to_region) / 2 / (num_pos * world)

    # --- L_mlm -----------------------------------------------------------------------------------
    def loss_mlm(self, mlm_logits: torch.Tensor | None, targets: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        """L_mlm, unweighted: cross-entropy of mlm_logits (B, T, V) against the `mlm_labels` (T,)
        of each target (-100 ignored, mean over the masked tokens of this rank, as official);
        targets without `mlm_labels` count as fully ignored."""
        if mlm_logits is None:
            raise ValueError("use_mlm needs output.mlm_logits: a model with an MLM head, in train mode "
                             "(or called with return_mlm_logits=True)")
        labels = torch.stack([t["mlm_labels"] for t in targets]).to(mlm_logits.device)
        if not bool((labels != IGNORE_INDEX).any()):
            return mlm_logits.reshape(-1)[:0].sum()  # nothing masked: a graph-connected zero
        return F.cross_entropy(mlm_logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)

    # --- L_mask ----------------------------------------------------------------------------------
    def loss_mask(self, mask_logits: Sequence[torch.Tensor] | None,
                  targets: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        """L_mask, unweighted: binary cross-entropy of each ground-truth box's phrase mask logits
        (N_i, M, M) — computed by the model on the ground-truth boxes — against its instance mask
        cut out along the box and resampled to M x M (RoIAlign, as official `project_masks_on_boxes`),
        averaged over every pixel of every box of this rank. Images without `masks` are left out."""
        if mask_logits is None:
            raise ValueError("use_mask needs output.mask_logits: a model with a mask head, called with mask_boxes "
                             "and mask_token_weights")
        if len(mask_logits) != len(targets):
            raise ValueError(f"{len(mask_logits)} mask-logit sets for {len(targets)} targets")
        predicted, wanted = [], []
        for index, (logits, target) in enumerate(zip(mask_logits, targets)):
            if "masks" not in target or logits.shape[0] == 0:
                continue
            boxes = target["boxes"]
            if logits.shape[0] != boxes.shape[0]:
                raise ValueError(f"target {index}: mask logits of {logits.shape[0]} boxes for {boxes.shape[0]} boxes")
            size = logits.shape[-1]
            rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
            wanted.append(roi_align(target["masks"][:, None].float(), rois, (size, size), spatial_scale=1.0,
                                    sampling_ratio=2)[:, 0])
            predicted.append(logits.float())
        if not predicted:
            return torch.stack([m.sum() for m in mask_logits]).sum() * 0.0 if mask_logits else torch.zeros(())
        return F.binary_cross_entropy_with_logits(torch.cat(predicted), torch.cat(wanted))

    # ------------------------------------------------------------------------------------------
    def _prepare_target(self, target: dict[str, torch.Tensor], num_tokens: int, device: torch.device,
                        index: int) -> dict[str, torch.Tensor]:
        """Check one target dict, move it to `device` and fit the token maps to T slots."""
        for key in ("boxes", "positive_map"):
            if key not in target:
                raise ValueError(f"target {index} has no {key!r}")
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        num_boxes = boxes.shape[0]
        positive_map = torch.as_tensor(target["positive_map"], device=device)
        if num_boxes == 0 and positive_map.numel() == 0:
            positive_map = positive_map.new_zeros((0, num_tokens))
        if positive_map.ndim != 2 or positive_map.shape[0] != num_boxes:
            raise ValueError(f"target {index}: positive_map must be (N={num_boxes}, T), got "
                             f"{tuple(positive_map.shape)}")
        out = {"boxes": boxes,
               "positive_map": _fit_slots(positive_map.float() > 0, num_tokens, False, f"target {index} positive_map")
               .float()}
        if self.config.use_inter:
            for key in ("labels", "token_labels"):
                if key not in target:
                    raise ValueError(f"target {index} has no {key!r} (needed by L_inter)")
            labels = torch.as_tensor(target["labels"], dtype=torch.long, device=device).reshape(-1)
            if labels.shape[0] != num_boxes:
                raise ValueError(f"target {index}: {labels.shape[0]} labels for {num_boxes} boxes")
            out["labels"] = labels
        if "token_labels" in target:  # L_inter's positives; also `token_accuracy`'s candidate tokens
            token_labels = torch.as_tensor(target["token_labels"], dtype=torch.long, device=device).reshape(-1)
            out["token_labels"] = _fit_slots(token_labels, num_tokens, -1, f"target {index} token_labels")
        if self.config.use_mlm:
            if "mlm_labels" in target:
                mlm = torch.as_tensor(target["mlm_labels"], dtype=torch.long, device=device).reshape(-1)
                out["mlm_labels"] = _fit_slots(mlm, num_tokens, IGNORE_INDEX, f"target {index} mlm_labels")
            else:
                out["mlm_labels"] = torch.full((num_tokens,), IGNORE_INDEX, dtype=torch.long, device=device)
        if self.config.use_mask and "masks" in target:
            masks = torch.as_tensor(target["masks"], device=device)
            if masks.ndim != 3 or masks.shape[0] != num_boxes:
                raise ValueError(f"target {index}: masks must be (N={num_boxes}, h, w), got {tuple(masks.shape)}")
            out["masks"] = masks
        return out


# ------------------------------------------------------------------------------------------------
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
    enclosing = (torch.max(px2, tx2) - torch.min(px1, tx1)) * (torch.max(py2, ty2) - torch.min(py1, ty1)) + GIOU_EPS
    union = pred_area + target_area - inter + GIOU_EPS
    giou = inter / union - (enclosing - union) / enclosing
    return 1.0 - giou


def _soft_cross_entropy(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Σ over rows with a positive of -Σ_j target_ij · log_softmax(logits_i)_j, where target_i is
    row i of `positive` normalised to sum 1. logits, positive: (N, M)."""
    has_positive = positive.any(dim=1)
    rows, pos = logits[has_positive], positive[has_positive].float()
    target = pos / pos.sum(dim=1, keepdim=True)
    return -(target * rows.log_softmax(dim=1)).sum()


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


def _fit_slots(values: torch.Tensor, num_tokens: int, fill: Any, name: str) -> torch.Tensor:
    """Pad or cut the last dimension to T slots; cutting must not drop anything but `fill`."""
    width = values.shape[-1]
    if width < num_tokens:
        pad = values.new_full((*values.shape[:-1], num_tokens - width), fill)
        return torch.cat([values, pad], dim=-1)
    if width > num_tokens:
        if bool((values[..., num_tokens:] != fill).any()):
            raise ValueError(f"{name} has {width} slots with entries past the model's {num_tokens} token "
                             "slots (a prompt truncated by the tokenizer?)")
        return values[..., :num_tokens]
    return values
