"""Name mapping between official GLIP checkpoints (maskrcnn-benchmark layout) and glipv2.

Official keys carry the `module.` prefix of a DDP-wrapped `state_dict()`. The tower of the
official head is one flat `nn.Sequential` (`rpn.head.dyhead_tower.{k}`): with early fusion, block
i is k = 3i (fusion), 3i+1 (BERT layer, or a parameter-free dummy), 3i+2 (DyConv); without early
fusion, block i is k = i. Ours names the three parts of a block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..modeling.config import GLIPv2Config

# (official regex, our template); "{tail}" carries the rest of the key unchanged.
_FIXED_RULES: list[tuple[str, str]] = [
    (r"backbone\.body\.(?P<tail>.+)", "core.backbone.{tail}"),
    (r"backbone\.fpn\.top_blocks\.(?P<tail>p[67]\..+)", "core.fpn.{tail}"),
    (r"backbone\.fpn\.(?P<tail>fpn_.+)", "core.fpn.{tail}"),
    (r"language_backbone\.body\.model\.(?P<tail>.+)", "core.text_encoder.model.{tail}"),
    (r"rpn\.head\.cls_logits\.(?P<tail>.+)", "heads.grounding.legacy_cls_logits.{tail}"),
    (r"rpn\.head\.dot_product_projection_text\.(?P<tail>.+)", "heads.grounding.token_projection.{tail}"),
    (r"rpn\.head\.(?P<tail>(bbox_pred|centerness|scales)\..+)", "heads.grounding.{tail}"),
    (r"rpn\.head\.(?P<tail>log_scale|bias_lang|bias0)", "heads.grounding.{tail}"),
    (
        r"rpn\.head\.mlm_head\.(?P<tail>transform\.(dense|LayerNorm)\..+|decoder\.weight|bias)",
        "heads.mlm.{tail}",
    ),
    (
        r"rpn\.anchor_generator\.cell_anchors\.(?P<tail>\d)",
        "heads.grounding.anchor_generator.cell_anchor_{tail}",
    ),
    # GLIPv2's inter-image region-word contrastive projections ("shallow contrastive" in GLIP's ATSS
    # loss evaluator: Linear(DYHEAD.CHANNELS, dim), Linear(LANG_DIM, dim), temperature (1,))
    (
        r"rpn\.loss_evaluator\.shallow_contrastive_projection_image\.(?P<tail>weight|bias)",
        "heads.inter.region.{tail}",
    ),
    (
        r"rpn\.loss_evaluator\.shallow_contrastive_projection_text\.(?P<tail>weight|bias)",
        "heads.inter.token.{tail}",
    ),
    (r"rpn\.loss_evaluator\.shallow_(?P<tail>log_scale)", "heads.inter.{tail}"),
]

# The inverse of _FIXED_RULES (our regex, official template without `module.`); order matters.
_REVERSE_RULES: list[tuple[str, str]] = [
    (r"core\.backbone\.(?P<tail>.+)", "backbone.body.{tail}"),
    (r"core\.fpn\.(?P<tail>p[67]\..+)", "backbone.fpn.top_blocks.{tail}"),
    (r"core\.fpn\.(?P<tail>fpn_.+)", "backbone.fpn.{tail}"),
    (r"core\.text_encoder\.model\.(?P<tail>.+)", "language_backbone.body.model.{tail}"),
    (r"heads\.grounding\.legacy_cls_logits\.(?P<tail>.+)", "rpn.head.cls_logits.{tail}"),
    (r"heads\.grounding\.token_projection\.(?P<tail>.+)", "rpn.head.dot_product_projection_text.{tail}"),
    (
        r"heads\.grounding\.anchor_generator\.cell_anchor_(?P<tail>\d)",
        "rpn.anchor_generator.cell_anchors.{tail}",
    ),
    (r"heads\.grounding\.(?P<tail>.+)", "rpn.head.{tail}"),
    (r"heads\.mlm\.(?P<tail>.+)", "rpn.head.mlm_head.{tail}"),
    (
        r"heads\.inter\.region\.(?P<tail>weight|bias)",
        "rpn.loss_evaluator.shallow_contrastive_projection_image.{tail}",
    ),
    (
        r"heads\.inter\.token\.(?P<tail>weight|bias)",
        "rpn.loss_evaluator.shallow_contrastive_projection_text.{tail}",
    ),
    (r"heads\.inter\.(?P<tail>log_scale)", "rpn.loss_evaluator.shallow_{tail}"),
]

# Present in official files but carrying nothing a glipv2 model stores.
_IGNORED = [
    re.compile(r"language_backbone\.body\.model\.embeddings\.position_ids"),  # a buffer in old transformers
    re.compile(r"language_backbone\.body\.model\.pooler\..+"),  # GLIP builds BERT without pooler
    re.compile(r"rpn\.head\.mlm_head\.decoder\.bias"),  # tied to `mlm_head.bias`
]


def official_to_ours(key: str, config: GLIPv2Config) -> str | None:
    """Our name for an official key (with or without `module.`), or None if it has none."""
    key = key.removeprefix("module.")
    m = re.fullmatch(r"rpn\.head\.dyhead_tower\.(\d+)\.(.+)", key)
    if m:
        k, tail = int(m.group(1)), m.group(2)
        if not config.early_fusion:
            return f"core.fusion.blocks.{k}.dyconv.{tail}"
        block, part = divmod(k, 3)
        if part == 0:
            return (
                f"core.fusion.blocks.{block}.fusion.{tail.removeprefix('b_attn.')}"
                if tail.startswith("b_attn.")
                else None
            )
        if part == 1:
            return f"core.fusion.blocks.{block}.text_layer.layer.{tail}"
        return f"core.fusion.blocks.{block}.dyconv.{tail}"
    if key == "rpn.tunable_linear.weight":
        return "core.prompt_embedding"
    for pattern, template in _FIXED_RULES:
        m = re.fullmatch(pattern, key)
        if m:
            return template.format(tail=m.group("tail"))
    return None


def ours_to_official(key: str, config: GLIPv2Config) -> str | None:
    """The official name (with `module.`) of one of our keys, or None for glipv2-only tensors."""
    m = re.fullmatch(r"core\.fusion\.blocks\.(\d+)\.(fusion|text_layer\.layer|dyconv)\.(.+)", key)
    if m:
        block, part, tail = int(m.group(1)), m.group(2), m.group(3)
        if not config.early_fusion:
            return f"module.rpn.head.dyhead_tower.{block}.{tail}"
        index = 3 * block + {"fusion": 0, "text_layer.layer": 1, "dyconv": 2}[part]
        tail = f"b_attn.{tail}" if part == "fusion" else tail
        return f"module.rpn.head.dyhead_tower.{index}.{tail}"
    if key == "core.prompt_embedding":
        return "module.rpn.tunable_linear.weight"
    for pattern, template in _REVERSE_RULES:
        m = re.fullmatch(pattern, key)
        if m:
            return "module." + template.format(tail=m.group("tail"))
    return None


@dataclass
class ConversionReport:
    """What happened to every official key (and, after `convert_checkpoint`, to every key of ours)."""

    converted: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # known extras (position_ids, pooler, tied copies)
    derived: list[str] = field(default_factory=list)  # buffers we recompute; checked equal
    unmapped: list[str] = field(default_factory=list)  # no counterpart in this configuration
    mismatched: list[str] = field(default_factory=list)  # counterpart exists with another shape / value
    missing: list[str] = field(default_factory=list)  # ours, given no value by the checkpoint

    def problems(self) -> list[str]:
        return (
            [f"unmapped: {k}" for k in self.unmapped]
            + [f"mismatch: {k}" for k in self.mismatched]
            + [f"missing: {k}" for k in self.missing]
        )


class ConversionError(ValueError):
    """A checkpoint or config that cannot be converted; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str], what: str = "cannot be converted") -> None:
        self.source = source
        self.problems = list(problems)
        lines = "".join(f"\n  {p}" for p in self.problems)
        super().__init__(f"{source} {what} ({len(self.problems)} problem(s)):{lines}")


def convert_state_dict(
    official: dict[str, torch.Tensor],
    model: torch.nn.Module,
    config: GLIPv2Config,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map an official state dict onto `model`'s names. Derived buffers (Swin relative position
    index, cell anchors) are compared with ours rather than copied: a difference means the
    config does not describe the checkpoint."""
    ours = model.state_dict()
    buffers = dict(model.named_buffers())
    out: dict[str, torch.Tensor] = {}
    report = ConversionReport()
    for key, tensor in official.items():
        bare = key.removeprefix("module.")
        if any(p.fullmatch(bare) for p in _IGNORED):
            report.ignored.append(key)
            continue
        name = official_to_ours(bare, config)
        if name is None:
            report.unmapped.append(key)
        elif name in ours:
            if tuple(ours[name].shape) != tuple(tensor.shape):
                report.mismatched.append(f"{key} {tuple(tensor.shape)} -> {name} {tuple(ours[name].shape)}")
            else:
                out[name] = tensor.to(ours[name].dtype)
                report.converted.append(key)
        elif name in buffers:
            if not torch.equal(buffers[name].to(tensor.dtype).cpu(), tensor.cpu()):
                report.mismatched.append(f"{key}: differs from the value this config derives")
            else:
                report.derived.append(key)
        else:
            report.unmapped.append(key)
    return out, report


def load_official_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict of an official `.pth` (`{"model": state_dict, ...}` or a bare state dict).

    Read with `torch.load(weights_only=True, mmap=True)`: tensors stay in the file until touched, so
    other top-level entries (optimizer, scheduler, iteration, an EMA copy of the model) cost no
    memory and are ignored. A file whose extras need full unpickling is refused unless
    `allow_pickle`, since unpickling can run code."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        blob = _torch_load(path, weights_only=True)
    except Exception as err:
        if not allow_pickle:
            raise ValueError(
                f"{path}: cannot be read with torch.load(weights_only=True) ({err}); "
                "if you trust the file, load it with allow_pickle=True"
            ) from err
        try:
            blob = _torch_load(path, weights_only=False)
        except Exception as err2:
            raise ValueError(f"{path}: cannot be read by torch.load ({err2})") from err2
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a GLIP checkpoint (expected a dict with a 'model' state dict)")
    return state


def _torch_load(path: Path, weights_only: bool) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        # files written with the legacy (pre-zip) serialization cannot be memory-mapped
        return torch.load(str(path), map_location="cpu", weights_only=weights_only)
