"""Vision backbones expose their feature channels and strides; timm CNNs plug in for small presets."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from glipv2 import GLIPv2, GLIPv2Config, GLIPv2Processor
from glipv2.modeling.backbone import build_backbone


def test_swin_exposes_channels_and_strides(tiny_config: Callable[..., GLIPv2Config]) -> None:
    backbone = build_backbone(tiny_config())
    assert backbone.out_channels == [32, 64, 128] and backbone.strides == [8, 16, 32]
    maps = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 8, 12), (1, 64, 4, 6), (1, 128, 2, 3)]


def test_timm_cnn_backbone(tiny_config: Callable[..., GLIPv2Config], bert_tokenizer: object) -> None:
    pytest.importorskip("timm")
    config = tiny_config(backbone="timm:resnet10t")
    model = GLIPv2(config).eval()
    assert model.core.backbone.strides == [8, 16, 32]
    assert model.core.backbone.out_channels == [128, 256, 512]
    text = GLIPv2Processor.from_config(config).tokenize("a cat.")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), text.input_ids, text.attention_mask)
    assert [tuple(f.shape[-2:]) for f in out.region_features] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]


def test_bad_backbones_raise(tiny_config: Callable[..., GLIPv2Config]) -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone(tiny_config(backbone="vgg"))
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match="strides"):  # a ViT has one stride-16 map only
        build_backbone(tiny_config(backbone="timm:vit_tiny_patch16_224"))
