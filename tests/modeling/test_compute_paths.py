"""The fast compute path equals the reference one (the official arithmetic): the folded fusion
attention against the projected one in float64, forward and gradients; real-token trimming against
all padded slots; a whole train step's losses and gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from glipv2 import GLIPv2, GLIPv2Config
from glipv2.modeling.config import COMPUTE_PATHS
from glipv2.modeling.core import real_length
from glipv2.modeling.fusion import BiMultiHeadAttention

Tokenizer = Any


def attention_pair(v_dim: int, l_dim: int, embed: int, heads: int) -> tuple[BiMultiHeadAttention, ...]:
    torch.manual_seed(0)
    projected = BiMultiHeadAttention(v_dim, l_dim, embed, heads, dropout=0.0, attention="projected")
    for p in projected.parameters():  # non-zero biases, so that the folded bias terms are exercised
        torch.nn.init.normal_(p, std=0.3)
    folded = BiMultiHeadAttention(v_dim, l_dim, embed, heads, dropout=0.0, attention="folded")
    folded.load_state_dict(projected.state_dict())
    return projected.double(), folded.double()


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("v_dim, l_dim, embed, heads", [(16, 12, 32, 2), (8, 20, 48, 4)])
def test_folded_attention_equals_projected(
    train: bool, v_dim: int, l_dim: int, embed: int, heads: int
) -> None:
    """Same updates and same gradients for every input and parameter, pads in one prompt; the second
    shape has H·C_v != E, where the fold is no longer a plain regrouping."""
    projected, folded = attention_pair(v_dim, l_dim, embed, heads)
    projected.train(train), folded.train(train)
    torch.manual_seed(1)
    v = torch.randn(2, 37, v_dim, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 6, l_dim, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    results = []
    for module in (projected, folded):
        dv, dt = module(v, t, mask)
        grad_dv, grad_dt = torch.ones_like(dv).cumsum(1) / 37, torch.ones_like(dt).cumsum(1) / 6
        grads = torch.autograd.grad((dv, dt), [v, t, *module.parameters()], (grad_dv, grad_dt))
        results.append((dv, dt, grads))
    (dv_p, dt_p, g_p), (dv_f, dt_f, g_f) = results
    torch.testing.assert_close(dv_f, dv_p, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(dt_f, dt_p, atol=1e-12, rtol=1e-10)
    for a, b in zip(g_f, g_p):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("row_block", [1, 7, 29, 1024])
def test_folded_inference_path_equals_projected(row_block: int) -> None:
    """Without autograd the folded attention runs over blocks of image positions, the softmax over
    all positions accumulated online: one block, several with a short last one, one row each. Large
    scores (up to ±40) make the running maximum move between blocks."""
    projected, folded = attention_pair(16, 12, 32, 2)
    folded.row_block = row_block
    torch.manual_seed(3)
    v, t = torch.randn(2, 29, 16, dtype=torch.float64), torch.randn(2, 5, 12, dtype=torch.float64)
    v[:, 20:] *= 8  # the later blocks hold the largest scores
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    with torch.no_grad():
        for a, b in zip(folded.eval()(v, t, mask), projected.eval()(v, t, mask)):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_auto_attention_counts_multiply_adds() -> None:
    """GLIP-T's shape (C_v 256, 8 heads, E 2048): folded at every prompt length up to 256; a shape
    where H·C_v > E goes back to projecting for long prompts."""
    glip = BiMultiHeadAttention(256, 768, 2048, 8, 0.0)
    assert all(glip.uses_folded(t) for t in (1, 20, 256))
    wide = BiMultiHeadAttention(256, 32, 256, 8, 0.0)  # H·C_v = 2048 > E = 256
    assert wide.uses_folded(2) and not wide.uses_folded(200)
    assert not BiMultiHeadAttention(256, 768, 2048, 8, 0.0, attention="projected").uses_folded(1)


def test_real_length() -> None:
    assert real_length(torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])) == 2
    assert real_length(torch.tensor([[1, 1, 1, 1]])) == 4


def paired_models(config: GLIPv2Config) -> tuple[GLIPv2, GLIPv2]:
    torch.manual_seed(0)
    fast = GLIPv2(config.replace(**COMPUTE_PATHS["fast"]))
    reference = GLIPv2(config.replace(**COMPUTE_PATHS["reference"]))
    reference.load_state_dict(fast.state_dict())
    return fast, reference


def test_trimmed_tokens_give_the_padded_outputs(
    tiny_config: Callable[..., GLIPv2Config], bert_tokenizer: Tokenizer
) -> None:
    """Two prompts of different lengths padded to 256 slots: the fast path computes only the
    longest prompt's slots; every real slot and every box output is the reference path's, and the
    slots after the longest prompt are zero in P̊ and P."""
    fast, reference = paired_models(tiny_config())
    enc = bert_tokenizer(
        ["a red circle. a blue square.", "cat"], padding="max_length", max_length=256, return_tensors="pt"
    )
    image = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        outputs = [m.eval()(image, enc["input_ids"], enc["attention_mask"]) for m in (fast, reference)]
    fast_out, ref_out = outputs
    real = enc["attention_mask"].bool()
    longest = real_length(enc["attention_mask"])
    assert 2 < longest < 20
    for name in ("token_features", "fused_token_features"):
        a, b = getattr(fast_out, name), getattr(ref_out, name)
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)
        assert bool((a[:, longest:] == 0).all()) and bool((a[1, :longest][~real[1, :longest]] != 0).any())
    for level, (a, b) in enumerate(zip(fast_out.logits, ref_out.logits)):
        torch.testing.assert_close(
            a.transpose(1, 2)[real], b.transpose(1, 2)[real], atol=1e-5, rtol=1e-5, msg=f"level {level}"
        )
    for name in ("box_regression", "centerness", "fused_region_features"):
        for a, b in zip(getattr(fast_out, name), getattr(ref_out, name)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_train_step_losses_and_gradients_agree(
    tiny_config: Callable[..., GLIPv2Config], bert_tokenizer: Tokenizer
) -> None:
    """A training forward + backward on both paths, in float64 (dropout off, so both are
    deterministic): the same loss and the same gradient for every parameter."""
    no_dropout = {
        **tiny_config().text_encoder,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    config = tiny_config(
        fusion_dropout=0.0, fpn_drop_block_prob=0.0, swin_drop_path_rate=0.0, text_encoder=no_dropout
    )
    fast, reference = (m.double() for m in paired_models(config))
    enc = bert_tokenizer(
        ["a red circle. a blue square."], padding="max_length", max_length=64, return_tensors="pt"
    )
    torch.manual_seed(2)
    image = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    losses = []
    for model in (fast, reference):
        out = model.train()(image, enc["input_ids"], enc["attention_mask"])
        real = enc["attention_mask"].bool()[:, None, :]
        loss = sum((s.sigmoid() * real).mean() for s in out.logits) + sum(
            b.abs().mean() for b in out.box_regression
        )
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-12)
    for (name, a), b in zip(fast.named_parameters(), reference.parameters()):
        if a.grad is not None or b.grad is not None:
            assert a.grad is not None and b.grad is not None, name
            torch.testing.assert_close(
                a.grad, b.grad, atol=1e-11, rtol=1e-8, msg=lambda m, n=name: f"{n}: {m}"
            )


def test_set_compute_path_switches_every_module(tiny_config: Callable[..., GLIPv2Config]) -> None:
    model = GLIPv2(tiny_config())
    model.set_compute_path("reference")
    assert model.config.deformable_conv_impl == "torchvision"
    impls = {m.deformable_impl for m in model.modules() if hasattr(m, "deformable_impl")}
    attns = {m.attention_impl for m in model.modules() if hasattr(m, "attention_impl")}
    assert impls == {"torchvision"} and attns == {"projected"} and not model.core.trim_text_padding
    model.set_compute_path("fast")
    assert {m.deformable_impl for m in model.modules() if hasattr(m, "deformable_impl")} == {"auto"}
    with pytest.raises(ValueError, match="unknown compute path"):
        model.set_compute_path("turbo")
    with pytest.raises(ValueError, match="fusion_attention must be one of"):
        model.set_compute(fusion_attention="sideways")
    with pytest.raises(ValueError, match="not compute fields"):
        model.set_compute(head_channels=3)


def test_folded_attention_with_only_a_query_bias_trainable() -> None:
    """A gradient through the key bias alone (v_proj.bias) takes the autograd path, not the blocks."""
    projected, folded = attention_pair(16, 12, 32, 2)
    for module in (projected, folded):
        for p in module.parameters():
            p.requires_grad_(False)
        module.v_proj.bias.requires_grad_(True)
    torch.manual_seed(4)
    v, t = torch.randn(1, 11, 16, dtype=torch.float64), torch.randn(1, 4, 12, dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.long)
    grads = [torch.autograd.grad(m(v, t, mask)[1].sum(), m.v_proj.bias)[0] for m in (projected, folded)]
    torch.testing.assert_close(grads[1], grads[0], atol=1e-12, rtol=1e-10)
