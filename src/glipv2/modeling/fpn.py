"""Feature pyramid P3-P7 over the backbone's C3-C5 (GLIP's `backbone.fpn`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def drop_block(x: torch.Tensor, prob: float, size: int) -> torch.Tensor:
    """DropBlock as GLIP applies it: block centres drawn with probability prob/size², shared by all
    channels, kept activations rescaled by numel/kept. Unlike torchvision's `drop_block2d`, maps
    smaller than the block are fine (they occur in P4/P5 of small training images)."""
    centres = (torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) < prob / size**2).to(x.dtype)
    dropped = F.max_pool2d(centres, size, stride=1, padding=size // 2)
    if size % 2 == 0:
        dropped = dropped[:, :, :-1, :-1]
    keep = 1.0 - dropped
    return x * keep * (keep.numel() / keep.sum().clamp(min=1.0))


class FPN(nn.Module):
    """Laterals `fpn_inner{2,3,4}` (1×1) and outputs `fpn_layer{2,3,4}` (3×3) on C3-C5, nearest
    top-down upsampling to the lateral's size, then P6 = 3×3/s2 conv on P5 (GLIP: in == out
    channels, so P5 rather than C5) and P7 = 3×3/s2 conv on ReLU(P6).

    In training, DropBlock (official FPN.DROP_BLOCK, p 0.3, block 3) is applied to the top-down sum
    that feeds each non-top output conv; the top-down path itself carries the undropped sum."""

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int,
        drop_block_prob: float = 0.0,
        drop_block_size: int = 3,
    ) -> None:
        super().__init__()
        self.drop_block_prob, self.drop_block_size = drop_block_prob, drop_block_size
        self.levels = [f"{i + 2}" for i in range(len(in_channels))]
        for name, cin in zip(self.levels, in_channels):
            self.add_module(f"fpn_inner{name}", nn.Conv2d(cin, out_channels, 1))
            self.add_module(f"fpn_layer{name}", nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.p6 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """[C3, C4, C5] -> [P3, P4, P5, P6, P7], all with `out_channels` channels."""
        inner = getattr(self, f"fpn_inner{self.levels[-1]}")(features[-1])
        results = [getattr(self, f"fpn_layer{self.levels[-1]}")(inner)]
        for name, feature in zip(self.levels[-2::-1], features[-2::-1]):
            lateral = getattr(self, f"fpn_inner{name}")(feature)
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            dropped = inner
            if self.training and self.drop_block_prob > 0:
                dropped = drop_block(inner, self.drop_block_prob, self.drop_block_size)
            results.insert(0, getattr(self, f"fpn_layer{name}")(dropped))
        p6 = self.p6(results[-1])
        p7 = self.p7(F.relu(p6))
        return [*results, p6, p7]
