"""Task heads on the core's features, and the registry that builds them from a `GLIPv2Config`.

A new task is one head file (a `TaskHead` subclass) plus one `register_head` line: the model builds
every registered head whose predicate holds for its config, runs its `forward`, and sums its
`loss` into the training objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .atss import ATSSTargets, atss_assign, centerness_targets
from .base import FlatOutputs, HeadInputs, LossConfig, LossContext, TaskHead
from .caption import CaptionHead, beam_search, greedy_decode, next_token_labels
from .grounding import GroundingHead, generalized_iou_loss
from .inter import RegionWordContrastiveHead
from .mask import LanguageAwareMaskHead
from .mlm import IGNORE_INDEX, MLMHead
from .vqa import VQAHead

if TYPE_CHECKING:
    from ..config import GLIPv2Config


@dataclass(frozen=True)
class HeadSpec:
    """A registered head: its class and when a config has it."""

    cls: Callable[[GLIPv2Config], TaskHead]
    enabled: Callable[[GLIPv2Config], bool]


# The order is the order of the forward and of the losses: the grounding head first (the ATSS
# assignment of the other heads' losses comes from its anchors).
_HEADS: dict[str, HeadSpec] = {}


def register_head(
    name: str, cls: Callable[[GLIPv2Config], TaskHead], enabled: Callable[[GLIPv2Config], bool]
) -> None:
    """Add a head to every model whose config satisfies `enabled` (built after the ones before)."""
    if name in _HEADS:
        raise ValueError(f"a head named {name!r} is already registered")
    _HEADS[name] = HeadSpec(cls, enabled)


def unregister_head(name: str) -> None:
    _HEADS.pop(name, None)


def registered_heads() -> list[str]:
    return list(_HEADS)


def head_options() -> set[str]:
    """The `GLIPv2.forward` keyword arguments that some registered head reads."""
    return {option for spec in _HEADS.values() for option in getattr(spec.cls, "options", ())}


def build_heads(config: GLIPv2Config) -> dict[str, TaskHead]:
    """The heads of a config, by name, in registry order."""
    return {name: spec.cls(config) for name, spec in _HEADS.items() if spec.enabled(config)}


register_head("grounding", GroundingHead, lambda c: True)
register_head("mlm", MLMHead, lambda c: c.mlm_head)
register_head("inter", RegionWordContrastiveHead, lambda c: c.region_word_contrastive_dim > 0)
register_head("mask", LanguageAwareMaskHead, lambda c: c.mask_head)
register_head("vqa", VQAHead, lambda c: bool(c.vqa_answers))
register_head("caption", CaptionHead, lambda c: c.caption_head)

__all__ = [
    "IGNORE_INDEX",
    "ATSSTargets",
    "CaptionHead",
    "FlatOutputs",
    "GroundingHead",
    "HeadInputs",
    "HeadSpec",
    "LanguageAwareMaskHead",
    "LossConfig",
    "LossContext",
    "MLMHead",
    "RegionWordContrastiveHead",
    "TaskHead",
    "VQAHead",
    "atss_assign",
    "beam_search",
    "build_heads",
    "centerness_targets",
    "generalized_iou_loss",
    "greedy_decode",
    "head_options",
    "next_token_labels",
    "register_head",
    "registered_heads",
    "unregister_head",
]
