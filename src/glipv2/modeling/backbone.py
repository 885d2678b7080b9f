"""Vision backbones: the official Swin, or any timm CNN through `features_only`.

Each backbone returns [C3, C4, C5] (strides 8, 16, 32) and exposes `out_channels` and `strides`.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import GLIPv2Config
from .swin import SwinBackbone

FPN_STRIDES = (8, 16, 32)


class TimmBackbone(nn.Module):
    """A timm model with `features_only=True`, keeping the stride-8/16/32 stages."""

    def __init__(self, name: str, pretrained: bool = False) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(f"backbone 'timm:{name}' needs `pip install timm`") from err
        probe = timm.create_model(name, features_only=True, pretrained=False)
        reductions = probe.feature_info.reduction()
        missing = [s for s in FPN_STRIDES if s not in reductions]
        if missing:
            raise ValueError(f"timm model {name!r} has no feature maps at strides {missing}")
        indices = tuple(reductions.index(s) for s in FPN_STRIDES)
        self.body = timm.create_model(name, features_only=True, out_indices=indices, pretrained=pretrained)
        self.out_channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(FPN_STRIDES)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(images))


def build_backbone(config: GLIPv2Config) -> nn.Module:
    if config.backbone == "swin":
        return SwinBackbone(
            config.swin_embed_dim,
            config.swin_depths,
            config.swin_num_heads,
            config.swin_window_size,
            config.swin_mlp_ratio,
            config.swin_drop_path_rate,
        )
    if config.backbone.startswith("timm:"):
        return TimmBackbone(config.backbone.removeprefix("timm:"), pretrained=config.timm_pretrained)
    raise ValueError(f"unknown backbone {config.backbone!r}: use 'swin' or 'timm:<model name>'")
