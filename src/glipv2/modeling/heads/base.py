"""What every task head shares: the head protocol, the loss weights, and the per-batch loss context.

A task head sits on the core's features (O̊, P̊ pre-fusion; O, P fused: `CoreOutput`) and owns its
parameters, its `forward` (outputs that go into `GLIPv2Output`) and its `loss` (a dict of named,
weighted losses). The criterion is the sum over the active heads (`GLIPv2Criterion`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .atss import ATSS_TOPK, ATSSTargets

if TYPE_CHECKING:
    from ..config import GLIPv2Config
    from ..outputs import CoreOutput, GLIPv2Output

Targets = Sequence[dict[str, torch.Tensor]]


@dataclass
class LossConfig:
    """Weights and switches of the GLIPv2 losses (official yacs key in the comments, `MODEL.`
    dropped). Defaults: the official values; L_inter, L_mlm and L_mask are off as in the official
    defaults — `for_model` switches each on when the model has its head."""

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
    # L_vqa (binary cross-entropy on soft answer scores) and L_caption (next-token cross-entropy)
    use_vqa: bool = False
    vqa_weight: float = 1.0
    use_caption: bool = False
    caption_weight: float = 1.0
    caption_label_smoothing: float = 0.1  # Oscar's captioning recipe (reference §2)
    # ATSS
    atss_topk: int = ATSS_TOPK  # ATSS.TOPK (× anchors per location, 1 here)
    # weights of losses of heads registered outside this package, by loss name (default 1)
    extra_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = [
            f"{f.name} must be >= 0"
            for f in dataclasses.fields(self)
            if f.name.endswith("_weight") and getattr(self, f.name) < 0
        ]
        problems += [f"extra_weights[{k!r}] must be >= 0" for k, v in self.extra_weights.items() if v < 0]
        if self.atss_topk < 1:
            problems.append("atss_topk must be >= 1")
        if not 0.0 <= self.caption_label_smoothing < 1.0:
            problems.append("caption_label_smoothing must lie in [0, 1)")
        if self.inter_max_regions < 1:
            problems.append("inter_max_regions must be >= 1")
        if problems:
            raise ValueError("invalid LossConfig: " + "; ".join(problems))

    @classmethod
    def for_model(cls, model_config: GLIPv2Config, **overrides: Any) -> LossConfig:
        """The official defaults, with L_inter on when the `GLIPv2Config` has a region–word
        contrastive projection, L_mlm, L_mask, L_vqa and L_caption when it has those heads."""
        switches = {
            "use_inter": bool(getattr(model_config, "region_word_contrastive_dim", 0)),
            "use_mlm": bool(getattr(model_config, "mlm_head", False)),
            "use_mask": bool(getattr(model_config, "mask_head", False)),
            "use_vqa": bool(getattr(model_config, "vqa_answers", ())),
            "use_caption": bool(getattr(model_config, "caption_head", False)),
        }
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
        for level, (s, b, c, n) in enumerate(
            zip(output.logits, output.box_regression, output.centerness, counts)
        ):
            if s.shape[1] != n or b.shape[-2] * b.shape[-1] != n or c.shape[-2] * c.shape[-1] != n:
                raise ValueError(
                    f"level {level}: logits, box_regression and centerness do not match its {n} anchors"
                )
        batch = output.logits[0].shape[0]
        # the losses run in float32 whatever the autocast dtype (official `custom_fwd(cast_inputs=float32)`)
        return cls(
            logits=torch.cat(output.logits, dim=1).float(),
            box_regression=torch.cat(
                [b.permute(0, 2, 3, 1).reshape(batch, -1, 4) for b in output.box_regression], dim=1
            ).float(),
            centerness=torch.cat([c.reshape(batch, -1) for c in output.centerness], dim=1).float(),
            anchors=torch.cat(output.anchors, dim=0).float(),
            num_anchors_per_level=counts,
        )


@dataclass
class LossContext:
    """What several heads' losses share in one batch, computed once by the criterion.

    flat: the grounding head's dense outputs, flattened; assignments: ATSS per image;
    num_pos: 0-d, positive anchors per rank averaged over ranks (>= 1), the official normaliser.
    All three are None in a batch where the grounding head did not run (VQA, captions)."""

    config: LossConfig
    flat: FlatOutputs | None = None
    assignments: list[ATSSTargets] | None = None
    num_pos: torch.Tensor | None = None


class TaskHead(nn.Module):
    """A head on the core's features. Subclasses set `name` (its key in `GLIPv2.heads` and in the
    state dict: `heads.<name>.*`) and implement `forward` and `loss`.

    forward(core, inputs) -> dict of outputs: keys that are `GLIPv2Output` fields fill those
    fields, any other key goes to `GLIPv2Output.extra`.
    `wanted(inputs)`: whether `forward` runs for this call (the default: always).
    `loss(output, targets, context)` -> dict of weighted losses named `loss_*` (empty when the
    head's losses are switched off in `context.config`); every loss must stay connected to the
    graph, so that each trained parameter gets a gradient in every step (DDP needs that). A head
    with one loss sets `loss_key` (its `LossConfig` fields are `use_<key>` and `<key>_weight`) and
    implements `unweighted_loss`; `loss` then switches and weighs it.
    `options`: the keyword arguments of `GLIPv2.forward` it reads (any other one is an error).
    `prepare_target(target, prepared, num_tokens, config)`: check and add the target entries this
    head's loss needs (default: none)."""

    name: ClassVar[str] = ""
    # the keyword arguments of `GLIPv2.forward` this head reads (see `HeadInputs.options`)
    options: ClassVar[tuple[str, ...]] = ()
    # the head reads a left-to-right text stream: the core runs causally when it is asked for
    causal_text: ClassVar[bool] = False
    # a loss-only head (nothing to predict, `wanted` False) whose loss is computed whenever this other
    # head runs, e.g. L_inter with the grounding head (it reads O̊, P̊ and the ATSS assignment)
    loss_runs_with: ClassVar[str | None] = None

    def wanted(self, inputs: HeadInputs) -> bool:
        return True

    def forward(self, core: CoreOutput, inputs: HeadInputs) -> dict[str, Any]:  # pragma: no cover - protocol
        raise NotImplementedError

    # the one loss of a single-loss head: `LossConfig.use_<loss_key>`, `<loss_key>_weight`, `loss_<loss_key>`
    loss_key: ClassVar[str] = ""

    def loss_active(self, config: LossConfig) -> bool:
        return bool(self.loss_key) and bool(getattr(config, f"use_{self.loss_key}"))

    def loss(self, output: GLIPv2Output, targets: Targets, context: LossContext) -> dict[str, torch.Tensor]:
        if not self.loss_active(context.config):
            return {}
        weight = getattr(context.config, f"{self.loss_key}_weight")
        return {f"loss_{self.loss_key}": weight * self.unweighted_loss(output, targets, context)}

    def unweighted_loss(self, output: GLIPv2Output, targets: Targets, context: LossContext) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} sets loss_key but has no unweighted_loss")

    def prepare_target(
        self,
        target: dict[str, Any],
        prepared: dict[str, torch.Tensor],
        num_tokens: int,
        config: LossConfig,
        index: int,
    ) -> None:
        return None


@dataclass
class HeadInputs:
    """Per-call inputs beyond the core's features.

    training: the model's mode; targets: one dict per image (training), else None;
    options: head-specific keyword arguments of `GLIPv2.forward` (e.g. `mask_boxes`,
    `return_mlm_logits`, `return_legacy_logits`), by name."""

    training: bool
    targets: Targets | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


def fit_slots(values: torch.Tensor, num_tokens: int, fill: Any, name: str) -> torch.Tensor:
    """Pad or cut the last dimension to T slots; cutting must not drop anything but `fill`."""
    width = values.shape[-1]
    if width < num_tokens:
        pad = values.new_full((*values.shape[:-1], num_tokens - width), fill)
        return torch.cat([values, pad], dim=-1)
    if width > num_tokens:
        if bool((values[..., num_tokens:] != fill).any()):
            raise ValueError(
                f"{name} has {width} slots with entries past the model's {num_tokens} token "
                "slots (a prompt truncated by the tokenizer?)"
            )
        return values[..., :num_tokens]
    return values


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward; `scale` × its gradient in the backward (a head's share of shaping the core)."""
    if scale == 1.0:
        return x
    return x * scale + x.detach() * (1.0 - scale)


class HeadTextLayers(nn.Module):
    """The BERT layers an understanding head owns on top of the fused P (`understanding_head_layers`):
    bidirectional for VQA, causal for captions (the same layer as the fusion tower's text side)."""

    def __init__(self, config: GLIPv2Config, causal: bool) -> None:
        super().__init__()
        from ..fusion_tower import TextLayer, text_layer_config

        self.causal = causal
        self.layers = nn.ModuleList(
            TextLayer(text_layer_config(config)) for _ in range(config.understanding_head_layers)
        )

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            tokens = layer(tokens, mask, causal=self.causal)
        return tokens
