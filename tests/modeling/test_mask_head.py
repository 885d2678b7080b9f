"""The language-aware mask head: shapes, the official logit formula, the phrase mean over token
channels, box placement, gradients, save / load, and a clear error without a head."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from glipv2 import GLIPv2, GLIPv2Config, GLIPv2Processor

PROMPT = "a red circle. a blue square."


def build(tiny_config: Callable[..., GLIPv2Config], seed: int = 0, **overrides: Any) -> GLIPv2:
    torch.manual_seed(seed)
    model = GLIPv2(
        tiny_config(
            pad_to_max_query_len=False, mask_head=True, mask_head_channels=16, mask_head_convs=2, **overrides
        )
    ).eval()
    with torch.no_grad():  # non-zero language bias and temperature, so both show in the logits
        model.mask_head.bias_lang.normal_()
        model.mask_head.log_scale.fill_(0.3)
    return model


def inputs(model: GLIPv2, batch: int = 2) -> dict[str, Any]:
    torch.manual_seed(1)
    tokens = GLIPv2Processor.from_config(model.config).tokenize([PROMPT] * batch)
    return {
        "pixel_values": torch.randn(batch, 3, 64, 96),
        "input_ids": tokens.input_ids,
        "attention_mask": tokens.attention_mask,
    }


def one_hot(rows: list[list[int]], num_tokens: int) -> torch.Tensor:
    weights = torch.zeros(len(rows), num_tokens)
    for i, tokens in enumerate(rows):
        weights[i, tokens] = 1.0
    return weights


def test_mask_logits_per_box_at_twice_the_pooler_resolution(tiny_config: Callable[..., GLIPv2Config]) -> None:
    model = build(tiny_config, mask_pooler_resolution=7)
    x = inputs(model)
    num_tokens = x["input_ids"].shape[1]
    boxes = [torch.tensor([[4.0, 4.0, 40.0, 30.0], [50.0, 10.0, 90.0, 60.0]]), torch.zeros(0, 4)]
    weights = [one_hot([[2, 3], [6, 7]], num_tokens), torch.zeros(0, num_tokens)]
    with torch.no_grad():
        out = model(**x, mask_boxes=boxes, mask_token_weights=weights)
    assert [tuple(m.shape) for m in out.mask_logits] == [(2, 14, 14), (0, 14, 14)]
    assert bool(torch.isfinite(out.mask_logits[0]).all())
    assert not torch.allclose(out.mask_logits[0][0], out.mask_logits[0][1])
    # without boxes the forward gives no mask logits, as before
    with torch.no_grad():
        assert model(**x).mask_logits is None


def test_logits_follow_the_official_formula(tiny_config: Callable[..., GLIPv2Config]) -> None:
    """<x(u, v), W·(P̂_t / 2) + b> / exp(log_scale) + P̂_t·bias_lang, P̂ = L2-normalised fused tokens,
    x = relu(deconv(convs(RoIAlign(O)))): for one token, recomputed from the head's layers."""
    model = build(tiny_config)
    x = inputs(model, batch=1)
    box = torch.tensor([[8.0, 8.0, 56.0, 40.0]])
    token = 3
    weights = one_hot([[token]], x["input_ids"].shape[1])
    with torch.no_grad():
        out = model(**x, mask_boxes=[box], mask_token_weights=[weights])
        head = model.mask_head
        pooled = head.pooler(
            {str(i): f for i, f in enumerate(out.fused_region_features[: head.levels])}, [box], [(64, 96)]
        )
        features = F.relu(head.upsample(head.convs(pooled)))[0]  # (C, M, M)
        p_hat = F.normalize(out.fused_token_features[0, token], dim=0)
        expected = (
            torch.einsum("chw,c->hw", features, head.token_projection(p_hat / 2)) / head.log_scale.exp()
            + p_hat @ head.bias_lang
        )
    torch.testing.assert_close(out.mask_logits[0][0], expected, atol=1e-5, rtol=1e-5)


def test_a_phrase_mask_is_the_mean_of_its_token_channels(tiny_config: Callable[..., GLIPv2Config]) -> None:
    model = build(tiny_config)
    x = inputs(model, batch=1)
    num_tokens = x["input_ids"].shape[1]
    box = torch.tensor([[10.0, 6.0, 70.0, 50.0]])
    with torch.no_grad():
        out = model(**x)
        per_token = [
            model.predict_mask_logits(out, [box], [one_hot([[t]], num_tokens)])[0] for t in (2, 3, 4)
        ]
        phrase = model.predict_mask_logits(out, [box], [one_hot([[2, 3, 4]], num_tokens)])[0]
        # weights are normalised: a map of 2s is the same phrase
        doubled = model.predict_mask_logits(out, [box], [2 * one_hot([[2, 3, 4]], num_tokens)])[0]
    torch.testing.assert_close(phrase, torch.stack(per_token).mean(dim=0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(doubled, phrase)


def test_the_box_decides_where_the_features_come_from(tiny_config: Callable[..., GLIPv2Config]) -> None:
    model = build(tiny_config)
    x = inputs(model, batch=1)
    weights = one_hot([[2, 3]], x["input_ids"].shape[1])
    with torch.no_grad():
        out = model(**x)
        left = model.predict_mask_logits(out, [torch.tensor([[0.0, 0.0, 40.0, 40.0]])], [weights])[0]
        right = model.predict_mask_logits(out, [torch.tensor([[50.0, 10.0, 90.0, 50.0]])], [weights])[0]
        again = model.predict_mask_logits(out, [torch.tensor([[0.0, 0.0, 40.0, 40.0]])], [weights])[0]
    assert not torch.allclose(left, right)
    torch.testing.assert_close(left, again)


def test_mask_logits_reach_the_backbone(tiny_config: Callable[..., GLIPv2Config]) -> None:
    model = build(tiny_config).train()
    x = inputs(model, batch=1)
    weights = one_hot([[2, 3]], x["input_ids"].shape[1])
    out = model(**x, mask_boxes=[torch.tensor([[4.0, 4.0, 60.0, 50.0]])], mask_token_weights=[weights])
    out.mask_logits[0].sum().backward()
    for name in ("core.backbone", "core.fpn", "core.fusion", "heads.mask"):
        grads = [p.grad for p in model.get_submodule(name).parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), name


def test_bad_mask_inputs_are_clear_errors(tiny_config: Callable[..., GLIPv2Config]) -> None:
    model = build(tiny_config)
    x = inputs(model, batch=1)
    num_tokens = x["input_ids"].shape[1]
    box = torch.tensor([[4.0, 4.0, 40.0, 30.0]])
    with torch.no_grad():
        with pytest.raises(ValueError, match="mask_token_weights"):
            model(**x, mask_boxes=[box])
        # the forward fits the weights to the T token slots; extra slots with weight are refused
        with pytest.raises(ValueError, match=r"mask_token_weights has \d+ slots with entries past"):
            model(**x, mask_boxes=[box], mask_token_weights=[torch.ones(1, num_tokens + 1)])
        with pytest.raises(ValueError, match="box sets"):
            model(**x, mask_boxes=[box, box], mask_token_weights=[torch.ones(1, num_tokens)] * 2)
        plain = GLIPv2(tiny_config(pad_to_max_query_len=False)).eval()
        out = plain(**inputs(plain, batch=1))
        with pytest.raises(ValueError, match="has no mask head"):
            plain.predict_mask_logits(out, [box], [torch.ones(1, num_tokens)])
    with pytest.raises(ValueError, match="mask_pooler_levels"):
        tiny_config(mask_head=True, mask_pooler_levels=6)


def test_save_and_load_keep_the_mask_head(tiny_config: Callable[..., GLIPv2Config], tmp_path: Path) -> None:
    model = build(tiny_config)
    x = inputs(model, batch=1)
    box = [torch.tensor([[4.0, 4.0, 60.0, 50.0]])]
    weights = [one_hot([[2, 3]], x["input_ids"].shape[1])]
    with torch.no_grad():
        before = model(**x, mask_boxes=box, mask_token_weights=weights).mask_logits[0]
    model.save_pretrained(tmp_path / "m")
    loaded = GLIPv2.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        after = loaded(**x, mask_boxes=box, mask_token_weights=weights).mask_logits[0]
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    # switched off by an override, the head and its weights are left out
    assert GLIPv2.from_pretrained(tmp_path / "m", mask_head=False).mask_head is None
