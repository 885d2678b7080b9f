"""Unit tests of the building blocks against independent hand computations (small tensors,
explicit loops or closed forms), so a failure names the piece that is wrong."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from glipv2 import GLIPv2, GLIPv2Config
from glipv2.modeling.anchors import MAX_LOG_SCALE, AnchorGenerator, cell_anchor, decode_boxes, encode_boxes
from glipv2.modeling.dyconv import Conv3x3GN, DynamicReLU, reread_as
from glipv2.modeling.fpn import FPN, drop_block
from glipv2.modeling.fusion import BiAttentionBlock
from glipv2.modeling.swin import PatchMerging, relative_position_index


# --- DyConv ---------------------------------------------------------------------------------------
def test_reread_as_takes_the_first_values_of_each_sample() -> None:
    """The offset re-read quirk: sample b's (C, H, W) buffer read flat, its first C*h*w values viewed
    as (C, h, w) — per sample, never crossing into the next sample's buffer."""
    b, c, h, w = 2, 3, 4, 5
    t = torch.arange(b * c * h * w).reshape(b, c, h, w)
    out = reread_as(t, 2, 3)
    assert out.shape == (b, c, 2, 3)
    for s in range(b):
        start = s * c * h * w  # sample s's buffer begins here
        expected = [[[start + ch * 6 + i * 3 + j for j in range(3)] for i in range(2)] for ch in range(c)]
        assert out[s].tolist() == expected
    assert torch.equal(reread_as(t, h, w), t)  # same size: unchanged


def test_reread_as_on_a_channel_slice() -> None:
    """DyConv passes `offset_mask[:, :18]`, a channel slice; the re-read must use the slice's own
    flat layout (as the contiguous CUDA buffer), not the parent's."""
    parent = torch.arange(2 * 27 * 4 * 4).reshape(2, 27, 4, 4).float()
    offsets = parent[:, :18]
    expected = torch.stack([offsets[s].flatten()[: 18 * 2 * 2].reshape(18, 2, 2) for s in range(2)])
    assert torch.equal(reread_as(offsets.contiguous(), 2, 2), expected)
    assert torch.equal(reread_as(offsets, 2, 2), expected)


@pytest.mark.parametrize("stride", [1, 2])
def test_deformable_conv_with_zero_offsets_is_a_plain_conv(stride: int) -> None:
    """Modulated DCN with zero offsets and all-one masks = conv2d with the same weights, then GN."""
    torch.manual_seed(0)
    layer = Conv3x3GN(8, 16, stride=stride, groups=4, deformable=True).eval()
    with torch.no_grad():
        layer.conv.bias.normal_()
        layer.bn.weight.normal_()
        layer.bn.bias.normal_()
    x = torch.randn(2, 8, 9, 11)
    oh, ow = layer.output_size(9, 11)
    assert (oh, ow) == ((9 - 1) // stride + 1, (11 - 1) // stride + 1)
    with torch.no_grad():
        got = layer(x, torch.zeros(2, 18, oh, ow), torch.ones(2, 9, oh, ow))
        plain = F.conv2d(x, layer.conv.weight, layer.conv.bias, stride=stride, padding=1)
        expected = F.group_norm(plain, 4, layer.bn.weight, layer.bn.bias, eps=layer.bn.eps)
        without_offsets = layer(x)  # no offsets given: the plain conv path
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(without_offsets, expected, atol=1e-5, rtol=1e-5)


def test_deformable_conv_offset_layout_is_dy_dx() -> None:
    """Offsets are (dy, dx) per tap: dx = +1 everywhere samples one column to the right, i.e. a
    plain conv over the input shifted left by one (zeros beyond the border)."""
    torch.manual_seed(0)
    layer = Conv3x3GN(4, 8, stride=1, groups=4, deformable=True).eval()
    x = torch.randn(1, 4, 6, 7)
    offset = torch.zeros(1, 18, 6, 7)
    offset[:, 1::2] = 1.0  # dx
    with torch.no_grad():
        got = layer(x, offset, torch.ones(1, 9, 6, 7))
        padded = F.pad(x, (1, 1, 1, 1))
        shifted = F.pad(padded[..., :, 1:], (0, 1, 0, 0))  # padded column j+1 at j
        expected = layer.bn(F.conv2d(shifted, layer.conv.weight, layer.conv.bias))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_coarser_level_conv_rereads_finer_offsets() -> None:
    """DyConv.0 on the coarser level gets the finer level's offsets: Conv3x3GN re-reads them
    instead of raising (torchvision would reject the shape)."""
    torch.manual_seed(0)
    layer = Conv3x3GN(4, 8, stride=1, groups=4, deformable=True).eval()
    coarse = torch.randn(2, 4, 3, 4)
    offset, mask = torch.randn(2, 18, 5, 7) * 0.7, torch.rand(2, 9, 5, 7)
    with torch.no_grad():
        got = layer(coarse, offset, mask)
        eff_offset = torch.stack([offset[s].flatten()[: 18 * 12].view(18, 3, 4) for s in range(2)])
        eff_mask = torch.stack([mask[s].flatten()[: 9 * 12].view(9, 3, 4) for s in range(2)])
        expected = layer.bn(
            deform_conv2d(coarse, eff_offset, layer.conv.weight, layer.conv.bias, padding=1, mask=eff_mask)
        )
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def _hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


def test_dynamic_relu_matches_formula() -> None:
    """DyReLU-B (K=2) with random weights against the formula written out here: coefficients from
    the spatial mean through fc, hard-sigmoid, split a1, b1, a2, b2."""
    torch.manual_seed(0)
    c = 8
    relu = DynamicReLU(c).eval()
    with torch.no_grad():
        for p in relu.parameters():
            p.normal_(std=1.0)
    x = torch.randn(2, c, 5, 6)
    with torch.no_grad():
        pooled = x.mean(dim=(2, 3))
        hidden = torch.clamp(pooled @ relu.fc[0].weight.T + relu.fc[0].bias, min=0.0)
        coeffs = _hard_sigmoid(hidden @ relu.fc[2].weight.T + relu.fc[2].bias)
        a1 = (coeffs[:, 0 * c : 1 * c] - 0.5) * 2.0 + 1.0
        b1 = coeffs[:, 1 * c : 2 * c] - 0.5
        a2 = (coeffs[:, 2 * c : 3 * c] - 0.5) * 2.0
        b2 = coeffs[:, 3 * c : 4 * c] - 0.5
        expected = torch.maximum(
            x * a1[..., None, None] + b1[..., None, None], x * a2[..., None, None] + b2[..., None, None]
        )
        got = relu(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_dynamic_relu_closed_form() -> None:
    """With fc's output fixed to (1.5, 0, -1.5, 0) per block, hard-sigmoid gives (0.75, 0.5, 0.25,
    0.5), i.e. a1 = 1.5, b1 = 0, a2 = -0.5, b2 = 0: y = 1.5x for x > 0 and -0.5x for x < 0."""
    c = 4
    relu = DynamicReLU(c).eval()
    with torch.no_grad():
        relu.fc[2].weight.zero_()
        relu.fc[2].bias.copy_(torch.tensor([1.5] * c + [0.0] * c + [-1.5] * c + [0.0] * c))
    x = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, c, 1, 5).contiguous()
    with torch.no_grad():
        y = relu(x)
    assert y[0, 0, 0].tolist() == pytest.approx([1.0, 0.25, 0.0, 1.5, 4.5])


# --- Swin -----------------------------------------------------------------------------------------
def test_relative_position_index_window_2() -> None:
    """Window 2: tokens (0,0), (0,1), (1,0), (1,1); index = (dy + 1) * 3 + (dx + 1), dy/dx = i - j."""
    expected = [
        [4, 3, 1, 0],
        [5, 4, 2, 1],
        [7, 6, 4, 3],
        [8, 7, 5, 4],
    ]
    assert relative_position_index(2).tolist() == expected
    index7 = relative_position_index(7)
    assert index7.shape == (49, 49)
    assert int(index7.min()) == 0 and int(index7.max()) == 13 * 13 - 1
    assert bool((index7.diagonal() == 6 * 13 + 6).all())  # zero displacement: the table's centre


@pytest.mark.parametrize(("h", "w"), [(4, 6), (3, 5)])
def test_patch_merging_gather_order(h: int, w: int) -> None:
    """Output token (i, j) concatenates x[2i,2j], x[2i+1,2j], x[2i,2j+1], x[2i+1,2j+1] (official
    order), zero-padding odd sizes at the bottom/right. Checked with the norm and the reduction
    replaced by identities, so the output is the gathered 4C vector itself."""
    c = 2
    merge = PatchMerging(c)
    merge.norm = nn.Identity()
    merge.reduction = nn.Identity()
    value = lambda r, col, ch: 100.0 * r + 10.0 * col + ch + 1  # noqa: E731 - distinct, non-zero
    rows = [[value(r, col, ch) for ch in range(c)] for r in range(h) for col in range(w)]
    x = torch.tensor(rows).unsqueeze(0)  # (1, H*W, C) tokens, row-major
    out = merge(x, h, w)
    oh, ow = (h + 1) // 2, (w + 1) // 2
    assert out.shape == (1, oh * ow, 4 * c)
    for i in range(oh):
        for j in range(ow):
            expected: list[float] = []
            for dr, dc in ((0, 0), (1, 0), (0, 1), (1, 1)):
                r, col = 2 * i + dr, 2 * j + dc
                expected += [value(r, col, ch) if r < h and col < w else 0.0 for ch in range(c)]
            assert out[0, i * ow + j].tolist() == expected


def test_patch_merging_with_its_own_layers() -> None:
    """The real module = LayerNorm(4C) then a bias-free Linear(4C -> 2C) on the gathered vector."""
    torch.manual_seed(0)
    merge = PatchMerging(3)
    assert merge.reduction.bias is None and merge.reduction.out_features == 6
    x = torch.randn(1, 4 * 4, 3)
    grid = x.view(1, 4, 4, 3)
    gathered = torch.cat(
        [grid[:, 0::2, 0::2], grid[:, 1::2, 0::2], grid[:, 0::2, 1::2], grid[:, 1::2, 1::2]], dim=-1
    ).reshape(1, 4, 12)
    expected = merge.reduction(F.layer_norm(gathered, (12,), merge.norm.weight, merge.norm.bias))
    torch.testing.assert_close(merge(x, 4, 4), expected)


# --- anchors and box coding -----------------------------------------------------------------------
def test_cell_anchor() -> None:
    """Legacy anchor of size 64 at stride 8: centred on (3.5, 3.5), inclusive corners."""
    assert cell_anchor(64, 8).tolist() == [[-28.0, -28.0, 35.0, 35.0]]
    assert cell_anchor(1024, 128).tolist() == [[-448.0, -448.0, 575.0, 575.0]]


def test_anchor_generator_grid() -> None:
    gen = AnchorGenerator((64, 128, 256, 512, 1024), (8, 16, 32, 64, 128))
    levels = gen([(2, 2), (2, 3), (1, 1), (1, 1), (1, 1)])
    assert levels[0].tolist() == [
        [-28.0, -28.0, 35.0, 35.0],
        [-20.0, -28.0, 43.0, 35.0],  # second location: one stride to the right
        [-28.0, -20.0, 35.0, 43.0],  # third: next row
        [-20.0, -20.0, 43.0, 43.0],
    ]
    base = cell_anchor(128, 16)[0]
    assert levels[1].shape == (6, 4)
    assert levels[1][4].tolist() == (base + torch.tensor([16.0, 16.0, 16.0, 16.0])).tolist()  # row 1, col 1
    assert levels[4].tolist() == [[-448.0, -448.0, 575.0, 575.0]]


def test_box_coder_round_trip() -> None:
    torch.manual_seed(0)
    anchors = torch.tensor([[-28.0, -28.0, 35.0, 35.0], [0.0, 0.0, 99.0, 49.0], [10.0, 20.0, 30.0, 80.0]])
    xy = torch.rand(3, 2) * 100
    wh = torch.rand(3, 2) * 150 + 5
    boxes = torch.cat([xy, xy + wh], dim=1)
    deltas = encode_boxes(boxes, anchors)
    torch.testing.assert_close(decode_boxes(deltas, anchors), boxes, atol=1e-3, rtol=1e-5)


def test_box_coder_legacy_conventions() -> None:
    """Zero deltas give the anchor back; dx = 10 moves the centre by one anchor width (+1 widths);
    dw = 5*ln 2 doubles the width; huge dw is clamped at ln(1000/16)."""
    anchor = torch.tensor([[0.0, 0.0, 9.0, 19.0]])  # width 10, height 20, centre (4.5, 9.5)
    assert decode_boxes(torch.zeros(1, 4), anchor).tolist() == anchor.tolist()
    assert decode_boxes(torch.tensor([[10.0, 0.0, 0.0, 0.0]]), anchor).tolist() == [[10.0, 0.0, 19.0, 19.0]]
    doubled = decode_boxes(torch.tensor([[0.0, 0.0, 5 * math.log(2.0), 0.0]]), anchor)[0]
    torch.testing.assert_close(doubled, torch.tensor([-5.0, 0.0, 14.0, 19.0]))
    huge = decode_boxes(torch.tensor([[0.0, 0.0, 1000.0, 0.0]]), anchor)[0]
    width = math.exp(MAX_LOG_SCALE) * 10
    assert float(huge[2] - huge[0] + 1) == pytest.approx(width)


# --- fusion ---------------------------------------------------------------------------------------
def test_fusion_ignores_padded_tokens_on_the_image_side() -> None:
    """Pads are masked in the text->image attention: changing hidden features at padded positions
    leaves the image output (and the real tokens' output) unchanged, while those pad positions'
    own outputs change (they are still updated, as officially). Changing a real token does change
    the image side, so the check is not vacuous."""
    torch.manual_seed(0)
    block = BiAttentionBlock(v_dim=16, l_dim=12, embed_dim=32, num_heads=4, dropout=0.1, init_values=0.5)
    block.eval()
    visual = [torch.randn(2, 16, 4, 5), torch.randn(2, 16, 2, 3)]
    text = torch.randn(2, 7, 12)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]])
    pads = mask == 0
    changed = text.clone()
    changed[pads] = torch.randn(int(pads.sum()), 12) * 5
    with torch.no_grad():
        v0, l0 = block(visual, text, mask)
        v1, l1 = block(visual, changed, mask)
    assert [tuple(v.shape) for v in v0] == [(2, 16, 4, 5), (2, 16, 2, 3)] and l0.shape == (2, 7, 12)
    for a, b in zip(v0, v1):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(l0[~pads], l1[~pads], atol=1e-6, rtol=1e-6)
    assert float((l0[pads] - l1[pads]).abs().amax(dim=-1).min()) > 1e-3  # every pad slot changed

    real_changed = text.clone()
    real_changed[0, 1] = torch.randn(12)  # (a constant shift would be undone by the LayerNorm)
    with torch.no_grad():
        v2, _ = block(visual, real_changed, mask)
    assert not torch.allclose(v0[0][0], v2[0][0], atol=1e-4)
    torch.testing.assert_close(v0[0][1], v2[0][1])  # sample 1's text did not change


# --- prediction layers ------------------------------------------------------------------------------
def test_prediction_layers_use_log_scale_biases_and_level_scales(
    tiny_config: Callable[..., GLIPv2Config],
) -> None:
    """The parity fixture leaves log_scale = 0, bias_lang = 0 and every level scale = 1, so it cannot
    tell whether they are applied. Here they are set to non-trivial values and S, the box regression
    and the centerness are recomputed from the tower outputs O, P by the official formulas:
    S = O·Linear(P̂/2)ᵀ / exp(log_scale) + P̂·bias_lang + bias0 with P̂ = P/|P|, boxes = scale_l·conv(O)."""
    torch.manual_seed(0)
    model = GLIPv2(tiny_config()).eval()
    head = model.heads["grounding"]
    with torch.no_grad():
        head.log_scale.fill_(0.7)
        head.bias_lang.normal_()
        head.bias0.fill_(-2.0)
        for level, scale in enumerate(head.scales):
            scale.scale.fill_(0.5 + level)
        ids = torch.tensor([[101, 2417, 4418, 1012, 2630, 102, 0, 0]])
        out = model(torch.randn(1, 3, 64, 64), ids, (ids != 0).long())
        p_hat = F.normalize(out.fused_token_features, dim=-1)
        tokens = head.token_projection(p_hat / 2)
        bias = p_hat @ head.bias_lang + head.bias0
    for level, o in enumerate(out.fused_region_features):
        regions = o.flatten(2).transpose(1, 2)
        expected = regions @ tokens.transpose(1, 2) / math.exp(0.7) + bias.unsqueeze(1)
        torch.testing.assert_close(out.logits[level], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.box_regression[level], (0.5 + level) * head.bbox_pred(o))
        torch.testing.assert_close(out.centerness[level], head.centerness(o))
    torch.testing.assert_close(out.token_embeddings, tokens)


# --- FPN ----------------------------------------------------------------------------------------------
def test_fpn_drop_block_only_in_training_and_only_below_the_top() -> None:
    """Official FPN.DROP_BLOCK: in training, the top-down sums feeding the P3/P4 output convs are
    block-dropped; P5 (and P6/P7 built on it) and the eval-mode outputs are untouched."""
    torch.manual_seed(0)
    plain = FPN([8, 16, 32], 8)
    dropping = FPN([8, 16, 32], 8, drop_block_prob=0.3, drop_block_size=3)
    dropping.load_state_dict(plain.state_dict())
    features = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    with torch.no_grad():
        reference = plain.eval()(features)
        for a, b in zip(dropping.eval()(features), reference):
            assert torch.equal(a, b)
        trained = dropping.train()(features)
    assert not torch.equal(trained[0], reference[0]) and not torch.equal(trained[1], reference[1])
    for a, b in zip(trained[2:], reference[2:]):
        assert torch.equal(a, b)


def test_drop_block_statistics_and_tiny_maps() -> None:
    """About prob of the positions are dropped (block centres at prob/size², each zeroing a
    size×size block), whole blocks across all channels, survivors rescaled; 1×1 and 2×2 maps work."""
    torch.manual_seed(0)
    x = torch.ones(4, 3, 64, 64)
    y = drop_block(x, 0.3, 3)
    zero = y[:, 0] == 0
    assert torch.equal(zero, y[:, 1] == 0) and torch.equal(zero, y[:, 2] == 0)  # same block in every channel
    assert 0.2 < zero.float().mean().item() < 0.35
    assert torch.allclose(y.mean(), torch.tensor(1.0), atol=1e-5)  # rescaled to keep the mean
    for size in ((1, 1), (2, 2), (2, 5)):
        assert drop_block(torch.ones(1, 2, *size), 0.3, 3).shape == (1, 2, *size)
