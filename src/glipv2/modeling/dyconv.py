"""DyHead's image-side block (`DyConv`): modulated deformable 3×3 convs across neighbouring
pyramid levels, scale-aware attention and dynamic ReLU, as in GLIP's VL-DyHead."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .deform_conv import modulated_deform_conv


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


def reread_as(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reinterpret each sample's (C, H, W) buffer as (C, height, width) by its first C·h·w values.

    The official CUDA DCN kernel does not check the offset shape; when the coarser level is
    convolved with the finer level's offsets it reads them this way (GLIP issue #62)."""
    b, c = t.shape[:2]
    return t.reshape(b, -1)[:, : c * height * width].reshape(b, c, height, width)


class Conv3x3GN(nn.Module):
    """3×3 conv (modulated deformable when offsets are given) + GroupNorm (`DyConv.k.{conv,bn}`)."""

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        stride: int,
        groups: int,
        deformable: bool,
        deformable_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.stride = stride
        self.deformable = deformable
        self.deformable_impl = deformable_impl
        self.conv = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1)
        self.bn = nn.GroupNorm(groups, channels_out)
        if deformable:  # official modulated-DCN init: uniform(±1/sqrt(fan_in)), zero bias
            bound = 1.0 / math.sqrt(channels_in * 9)
            nn.init.uniform_(self.conv.weight, -bound, bound)
            nn.init.zeros_(self.conv.bias)
        else:
            nn.init.normal_(self.conv.weight, std=0.01)
            nn.init.zeros_(self.conv.bias)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return (height - 1) // self.stride + 1, (width - 1) // self.stride + 1

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if offset is None:
            y = self.conv(x)
        else:
            oh, ow = self.output_size(*x.shape[-2:])
            if offset.shape[-2:] != (oh, ow):
                offset, mask = reread_as(offset, oh, ow), reread_as(mask, oh, ow)
            y = modulated_deform_conv(
                x, offset, self.conv.weight, self.conv.bias, self.stride, 1, mask, self.deformable_impl
            )
        return self.bn(y)


class DynamicReLU(nn.Module):
    """DyReLU-B with K=2: max(x·a1 + b1, x·a2 + b2), coefficients from the global average."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, 4 * channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coeffs = hard_sigmoid(self.fc(x.mean(dim=(2, 3))))[:, :, None, None]
        a1, b1, a2, b2 = coeffs.split(self.channels, dim=1)  # official order: a1, b1, a2, b2
        return torch.maximum(x * ((a1 - 0.5) * 2.0 + 1.0) + (b1 - 0.5), x * ((a2 - 0.5) * 2.0) + (b2 - 0.5))


class DyConv(nn.Module):
    """One DyHead block over all levels.

    Level l mixes three terms: `DyConv.1` on x_l, `DyConv.2` (stride 2) on the finer x_{l-1},
    and `DyConv.0` on the coarser x_{l+1} upsampled (bilinear, align_corners=True) to level l.
    All three use the offsets/masks predicted on x_l.
    """

    def __init__(
        self,
        channels_in: int,
        channels: int,
        groups: int,
        deformable: bool,
        dyrelu: bool,
        scale_attention: bool,
        deformable_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.DyConv = nn.ModuleList(
            [
                Conv3x3GN(channels_in, channels, 1, groups, deformable, deformable_impl),
                Conv3x3GN(channels_in, channels, 1, groups, deformable, deformable_impl),
                Conv3x3GN(channels_in, channels, 2, groups, deformable, deformable_impl),
            ]
        )
        # Sequential keeps the official key `AttnConv.1` (index 0 is the pooling)
        self.AttnConv = (
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels_in, 1, 1), nn.ReLU(inplace=True))
            if scale_attention
            else None
        )
        if self.AttnConv is not None:
            nn.init.normal_(self.AttnConv[1].weight, std=0.01)
            nn.init.zeros_(self.AttnConv[1].bias)
        self.relu: nn.Module = DynamicReLU(channels) if dyrelu else nn.ReLU()
        self.offset = nn.Conv2d(channels_in, 27, 3, padding=1) if deformable else None

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for level, x in enumerate(features):
            conv_args: dict[str, torch.Tensor] = {}
            if self.offset is not None:
                offset_mask = self.offset(x)
                conv_args = {
                    "offset": offset_mask[:, :18].contiguous(),
                    "mask": offset_mask[:, 18:].sigmoid(),
                }
            terms = [self.DyConv[1](x, **conv_args)]
            if level > 0:
                terms.append(self.DyConv[2](features[level - 1], **conv_args))
            if level < len(features) - 1:
                coarse = self.DyConv[0](features[level + 1], **conv_args)
                terms.append(F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=True))
            weights = [hard_sigmoid(self.AttnConv(t)) for t in terms] if self.AttnConv is not None else None
            out.append(self.relu(_weighted_mean(terms, weights)))
        return out


def _weighted_mean(terms: list[torch.Tensor], weights: list[torch.Tensor] | None) -> torch.Tensor:
    """mean_i(w_i · t_i) over a level's 2–3 (B, C, H, W) terms, weights (B, 1, 1, 1) each or None:
    the official stack-multiply-mean as a running sum, without the (k, B, C, H, W) stack and its
    weighted copy (two full-size buffers per level)."""
    total = terms[0] if weights is None else terms[0] * weights[0]
    for i, term in enumerate(terms[1:], start=1):
        total = total + term if weights is None else torch.addcmul(total, term, weights[i])
    return total / len(terms)
