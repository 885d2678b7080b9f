"""GLIPv2Criterion: each loss against a small hand-computed case (GIoU, L_loc's weighting, the
focal L_intra, L_inter with known cross-image positives, L_mlm, L_mask), target handling, and the whole
criterion on a tiny model (finite losses whose gradients reach the backbone, head and projections;
images without boxes)."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

from glipv2 import GLIPv2, GLIPv2Config, GLIPv2Output, GLIPv2Processor
from glipv2.modeling.criterion import GLIPv2Criterion
from glipv2.modeling.heads import (
    ATSSTargets,
    GroundingHead,
    LanguageAwareMaskHead,
    LossConfig,
    MLMHead,
    RegionWordContrastiveHead,
    generalized_iou_loss,
)

ALPHA, GAMMA = 0.25, 2.0


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def focal(logit: float, target: float) -> float:
    """The RetinaNet focal loss of one binary prediction, written out."""
    p = sigmoid(logit)
    if target == 1:
        return -ALPHA * (1 - p) ** GAMMA * math.log(p)
    return -(1 - ALPHA) * p**GAMMA * math.log(1 - p)


def bce(logit: float, target: float) -> float:
    p = sigmoid(logit)
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def log_softmax(row: list[float]) -> list[float]:
    norm = math.log(sum(math.exp(v) for v in row))
    return [v - norm for v in row]


def assignment(
    matched: list[int], regression: torch.Tensor | None = None, centerness: list[float] | None = None
) -> ATSSTargets:
    n = len(matched)
    return ATSSTargets(
        torch.tensor(matched),
        regression if regression is not None else torch.zeros(n, 4),
        torch.tensor(centerness if centerness is not None else [0.0] * n),
    )


def grounding_head() -> GroundingHead:
    """A grounding head (L_loc, L_intra, token accuracy); its loss methods read only their arguments."""
    return GroundingHead(GLIPv2Config())


def inter_head(region_dim: int, token_dim: int, dim: int) -> RegionWordContrastiveHead:
    """The L_inter head alone, from the only config fields it reads (temperature 1)."""
    config = SimpleNamespace(
        fpn_channels=region_dim,
        text_hidden_size=token_dim,
        region_word_contrastive_dim=dim,
        region_word_contrastive_log_scale_init=0.0,
    )
    return RegionWordContrastiveHead(config)  # type: ignore[arg-type]


def identity_projection(dim: int) -> RegionWordContrastiveHead:
    proj = inter_head(dim, dim, dim)
    with torch.no_grad():
        for layer in (proj.region, proj.token):
            layer.weight.copy_(torch.eye(dim))
            layer.bias.zero_()
    return proj


# --- L_loc ------------------------------------------------------------------------------------------
def test_giou_loss_by_hand() -> None:
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 3.0, 9.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0], [4.0, 5.0, 6.0, 9.0]])
    # 1) areas 4 and 4, intersection 1, union 7, enclosing 3x3 = 9: GIoU = 1/7 - 2/9
    # 2) disjoint: intersection 0, union 2, enclosing 3x1: GIoU = 0 - 1/3
    # 3) x2 < x1 collapses the prediction to the line x = 5 (area 0): GIoU = 0 - (8 - 8)/8 = 0
    expected = torch.tensor([1 - (1 / 7 - 2 / 9), 1 + 1 / 3, 1.0])
    torch.testing.assert_close(generalized_iou_loss(pred, target), expected, atol=1e-6, rtol=0)
    # identical boxes: 0
    assert generalized_iou_loss(target[:1], target[:1]).item() == pytest.approx(0.0, abs=1e-6)


def test_loss_loc_weights_giou_by_centerness() -> None:
    """Two positive anchors and one background anchor; the regression targets are given as deltas
    (L_loc decodes them, like the predictions), so every box below is worked out by hand with the
    legacy coder: w_a = x2 - x1 + 1, centre (x1 + x2) / 2, weights (10, 10, 5, 5), and a decoded box
    [c - (w - 1) / 2, c + (w - 1) / 2]; GIoU areas without the +1.

    anchor 0 [0, 0, 15, 15] (w_a 16, centre 7.5):
      target deltas 0                 -> [0, 0, 15, 15]
      pred (2.5, 0, 0, 0): cx = 2.5 / 10 * 16 + 7.5 = 11.5 -> [4, 0, 19, 15]
      areas 15*15 = 225 each, intersection 11*15 = 165, union 285, enclosing 19*15 = 285
      -> 1 - GIoU = 1 - 165/285 = 8/19
    anchor 1 [16, 0, 31, 15] (w_a 16, centre (23.5, 7.5)):
      target (0, 0, 5 ln 2, 0): w = 32 -> [23.5 - 15.5, 0, 23.5 + 15.5, 15] = [8, 0, 39, 15]
      pred (0, -2.5, 0, 0): cy = -2.5 / 10 * 16 + 7.5 = 3.5 -> [16, -4, 31, 11]
      areas 225 and 31*15 = 465, intersection 15*11 = 165, union 525, enclosing 31*19 = 589
      -> 1 - GIoU = 1 - (165/525 - 64/589) = 1 - 11/35 + 64/589
    L_giou = (0.8 * 8/19 + 0.5 * (1 - 11/35 + 64/589)) / (0.8 + 0.5) = 0.564637...
    L_centerness = (BCE(0.3; 0.8) + BCE(-1.2; 0.5)) / num_pos (2)."""
    anchors = torch.tensor([[0.0, 0.0, 15.0, 15.0], [16.0, 0.0, 31.0, 15.0], [0.0, 16.0, 15.0, 31.0]])
    targets = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 5 * math.log(2.0), 0.0], [0.0, 0.0, 0.0, 0.0]])
    ctr = [0.8, 0.5, 0.0]
    deltas = torch.tensor(
        [[[2.5, 0.0, 0.0, 0.0], [0.0, -2.5, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]], requires_grad=True
    )
    ctr_logits = torch.tensor([[0.3, -1.2, 5.0]], requires_grad=True)
    head = grounding_head()
    num_pos = torch.tensor(2.0)
    giou, centerness = head.loss_loc(
        deltas, ctr_logits, anchors, [assignment([0, 1, -1], targets, ctr)], num_pos
    )

    expected = (0.8 * 8 / 19 + 0.5 * (1 - 11 / 35 + 64 / 589)) / (0.8 + 0.5)
    assert expected == pytest.approx(0.5646374, rel=1e-6)
    assert giou.item() == pytest.approx(expected, rel=1e-5)
    assert centerness.item() == pytest.approx((bce(0.3, 0.8) + bce(-1.2, 0.5)) / 2, rel=1e-5)
    (giou + centerness).backward()
    assert deltas.grad is not None and not deltas.grad[0, 2].any() and deltas.grad[0, :2].abs().sum() > 0


def test_loss_loc_without_positives_is_a_connected_zero() -> None:
    deltas = torch.randn(1, 3, 4, requires_grad=True)
    ctr_logits = torch.randn(1, 3, requires_grad=True)
    giou, centerness = grounding_head().loss_loc(
        deltas, ctr_logits, torch.zeros(3, 4), [assignment([-1, -1, -1])], torch.tensor(1.0)
    )
    assert giou.item() == 0.0 and centerness.item() == 0.0
    (giou + centerness).backward()
    assert deltas.grad is not None and not deltas.grad.any()


# --- L_intra ----------------------------------------------------------------------------------------
def test_loss_intra_focal_by_hand() -> None:
    """2 anchors x 3 token slots; the third slot is padding. Anchor 0 is positive for box 1, whose
    phrase covers slot 1; anchor 1 is background (all-zero target, no "no-object" slot)."""
    logits = torch.tensor([[[0.4, -1.1, 2.0], [-0.3, 1.5, -3.0]]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    positive_map = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    head = grounding_head()
    loss = head.loss_intra(
        logits, mask, [assignment([1, -1])], [{"positive_map": positive_map}], torch.tensor(1.0)
    )
    expected = focal(0.4, 0) + focal(-1.1, 1) + focal(-0.3, 0) + focal(1.5, 0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # divided by the number of positives
    half = head.loss_intra(
        logits, mask, [assignment([1, -1])], [{"positive_map": positive_map}], torch.tensor(2.0)
    )
    assert half.item() == pytest.approx(expected / 2, rel=1e-6)
    loss.backward()
    assert logits.grad is not None and not logits.grad[..., 2].any()  # the padding slot gets nothing


def test_token_accuracy_by_hand() -> None:
    """Image 0: anchors 0 and 1 belong to box 0 (phrase = slots 0-1), anchor 2 is background.
    Anchor 0's best real slot is 1 (hit); anchor 1's best is slot 3, but slot 3 is padding, so its
    best real slot is 2 (miss). Image 1: anchor 0 belongs to box 1 (slot 2) and scores slot 2
    highest (hit). 2 hits of 3 positives."""
    logits = torch.tensor(
        [
            [[0.0, 1.0, -1.0, 9.0], [0.5, 0.2, 0.9, 9.0], [5.0, 5.0, 5.0, 5.0]],
            [[0.1, 0.2, 0.3, -9.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
        ]
    )
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    maps = [torch.tensor([[1.0, 1.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])]
    head = grounding_head()
    accuracy = head.token_accuracy(
        logits, mask, [assignment([0, 0, -1]), assignment([1, -1, -1])], [{"positive_map": m} for m in maps]
    )
    assert accuracy.item() == pytest.approx(2 / 3)
    none = head.token_accuracy(
        logits, mask, [assignment([-1, -1, -1])] * 2, [{"positive_map": m} for m in maps]
    )
    assert none.item() == 0.0
    # with token labels, only phrase tokens compete: image 0's slot 2 is no phrase's ("."), so
    # anchor 1's best candidate becomes slot 0, in its own phrase
    labelled = [
        {"positive_map": maps[0], "token_labels": torch.tensor([7, 7, -1, -1])},
        {"positive_map": maps[1], "token_labels": torch.tensor([3, -1, 5, -1])},
    ]
    accuracy = head.token_accuracy(logits, mask, [assignment([0, 0, -1]), assignment([1, -1, -1])], labelled)
    assert accuracy.item() == pytest.approx(1.0)


# --- L_inter ----------------------------------------------------------------------------------------
def test_loss_inter_two_images_by_hand() -> None:
    """Identity projections and temperature 1, so the logits are the cosines of the given vectors.

    Image 0: anchor 0 -> box "cat" (label 7, phrase = slot 1); anchor 1 background.
             tokens [CLS] cat(7) dog(9) [PAD]
    Image 1: anchor 0 -> box "cat" (label 7, slot 2), anchor 1 -> box "dog" (label 9, slot 1).
             tokens [CLS] dog(9) cat(7) [SEP]
    Regions r0 (img 0, cat), r1 (img 1, cat), r2 (img 1, dog); real tokens k0..k2 (img 0), k3..k6 (img 1).
    Positives: own image through the phrase, other image through equal labels:
      r0: k1 (own phrase), k5 (cat in image 1)
      r1: k5 (own phrase), k1 (cat in image 0)
      r2: k4 (own phrase), k2 (dog in image 0 — no region of image 0 is a dog)
    """

    def unit(a: float) -> list[float]:
        return [math.cos(a), math.sin(a)]

    # O̊ (B=2, C=2, H=1, W=2): directions 0.3 (r0), 2.0 (background) | 1.2 (r1), 2.5 (r2); the
    # lengths differ on purpose (O̊ is not normalised, the projection output is)
    r0, r1, r2 = 0.3, 1.2, 2.5
    vectors = [
        [[2.0 * x for x in unit(r0)], unit(2.0)],
        [[0.5 * x for x in unit(r1)], [3.0 * x for x in unit(r2)]],
    ]
    region_features = [torch.tensor(vectors).permute(0, 2, 1)[:, :, None, :]]
    angles_t = [[0.0, 0.5, 2.2, 9.9], [1.0, 2.9, 1.4, -2.0]]  # image, slot -> token direction
    token_features = torch.tensor([[unit(a) for a in img] for img in angles_t]) * 4.0
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    targets = [
        {
            "positive_map": torch.tensor([[0.0, 1, 0, 0]]),
            "labels": torch.tensor([7]),
            "token_labels": torch.tensor([-1, 7, 9, -1]),
        },
        {
            "positive_map": torch.tensor([[0.0, 0, 1, 0], [0.0, 1, 0, 0]]),
            "labels": torch.tensor([7, 9]),
            "token_labels": torch.tensor([-1, 9, 7, -1]),
        },
    ]
    head = identity_projection(2)
    num_pos = torch.tensor(3.0)
    loss = head.loss_inter(
        region_features, token_features, mask, [assignment([0, -1]), assignment([0, 1])], targets, num_pos
    )

    regions = [r0, r1, r2]
    tokens = angles_t[0][:3] + angles_t[1]
    logits = [[math.cos(r - t) for t in tokens] for r in regions]  # cosine = dot of unit vectors
    positive = [[0, 1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, 1, 0], [0, 0, 1, 0, 1, 0, 0]]
    region_to_token = 0.0
    for row, pos in zip(logits, positive):
        lsm = log_softmax(row)
        region_to_token -= sum(p / sum(pos) * v for p, v in zip(pos, lsm))
    token_to_region = 0.0
    for k in range(len(tokens)):
        col, pos = [row[k] for row in logits], [row[k] for row in positive]
        if sum(pos):  # tokens without a positive region are skipped
            lsm = log_softmax(col)
            token_to_region -= sum(p / sum(pos) * v for p, v in zip(pos, lsm))
    expected = (region_to_token + token_to_region) / 2 / 3.0
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    # the temperature: logits / exp(log_scale) (official `shallow_log_scale`)
    with torch.no_grad():
        head.log_scale.fill_(math.log(0.5))
    hot = head.loss_inter(
        region_features, token_features, mask, [assignment([0, -1]), assignment([0, 1])], targets, num_pos
    )
    logits2 = [[2 * v for v in row] for row in logits]
    r2t = -sum(
        sum(p / sum(pos) * v for p, v in zip(pos, log_softmax(row))) for row, pos in zip(logits2, positive)
    )
    t2r = 0.0
    for k in range(len(tokens)):
        col, pos = [row[k] for row in logits2], [row[k] for row in positive]
        if sum(pos):
            t2r -= sum(p / sum(pos) * v for p, v in zip(pos, log_softmax(col)))
    assert hot.item() == pytest.approx((r2t + t2r) / 6, rel=1e-5)


def test_loss_inter_without_regions_is_a_connected_zero() -> None:
    proj = inter_head(4, 6, 3)
    targets = [
        {
            "positive_map": torch.zeros(0, 5),
            "labels": torch.zeros(0, dtype=torch.long),
            "token_labels": torch.full((5,), -1),
        }
    ]
    loss = proj.loss_inter(
        [torch.randn(1, 4, 2, 2)],
        torch.randn(1, 5, 6),
        torch.ones(1, 5),
        [assignment([-1] * 4)],
        targets,
        torch.tensor(1.0),
    )
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in proj.parameters())


# --- L_mlm ------------------------------------------------------------------------------------------
def test_loss_mlm_by_hand() -> None:
    logits = torch.tensor([[[0.1, 0.2, 0.3], [1.0, -1.0, 0.5]], [[2.0, 0.0, 0.0], [0.3, 0.3, 0.9]]])
    targets = [{"mlm_labels": torch.tensor([-100, 2])}, {"mlm_labels": torch.tensor([0, -100])}]
    expected = -(log_softmax([1.0, -1.0, 0.5])[2] + log_softmax([2.0, 0.0, 0.0])[0]) / 2
    assert MLMHead.loss_mlm(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    nothing = MLMHead.loss_mlm(logits.requires_grad_(), [{"mlm_labels": torch.full((2,), -100)}] * 2)
    assert nothing.item() == 0.0 and nothing.requires_grad
    with pytest.raises(ValueError, match="mlm_logits"):
        MLMHead.loss_mlm(None, targets)


def test_loss_mask_by_hand() -> None:
    """A 10x10 mask whose left half is set, cut along the whole image at M = 2 (RoIAlign, 2x2 samples
    per bin: x = 1.125, 3.375 | 5.625, 7.875) is [[1, 0], [1, 0]]; L_mask is the mean BCE of the four
    pixels. A second image without masks adds nothing."""
    mask = torch.zeros(1, 10, 10, dtype=torch.uint8)
    mask[:, :, :5] = 1
    logits = torch.tensor([[[2.0, -1.0], [0.5, 3.0]]])
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    targets = [{"boxes": boxes, "masks": mask}, {"boxes": boxes}]
    expected = (bce(2.0, 1) + bce(-1.0, 0) + bce(0.5, 1) + bce(3.0, 0)) / 4
    loss = LanguageAwareMaskHead.loss_mask([logits, torch.zeros(1, 2, 2)], targets)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    nothing = LanguageAwareMaskHead.loss_mask([logits.requires_grad_()], [{"boxes": boxes}])
    assert nothing.item() == 0.0 and nothing.requires_grad
    with pytest.raises(ValueError, match="mask_logits"):
        LanguageAwareMaskHead.loss_mask(None, targets)
    with pytest.raises(ValueError, match="mask logits of 1 boxes for 2 boxes"):
        LanguageAwareMaskHead.loss_mask(
            [logits], [{"boxes": boxes.repeat(2, 1), "masks": mask.repeat(2, 1, 1)}]
        )


# --- configuration and targets ----------------------------------------------------------------------
def test_loss_config() -> None:
    assert LossConfig().giou_weight == 2.0 and not LossConfig().use_inter and not LossConfig().use_mlm
    glipv2_like = GLIPv2Config(region_word_contrastive_dim=64, mlm_head=True)
    cfg = LossConfig.for_model(glipv2_like, mlm_weight=0.5)
    assert cfg.use_inter and cfg.use_mlm and cfg.mlm_weight == 0.5
    assert not LossConfig.for_model(GLIPv2Config()).use_inter
    assert LossConfig.for_model(GLIPv2Config(mask_head=True)).use_mask
    assert not LossConfig.for_model(GLIPv2Config()).use_mask
    with pytest.raises(ValueError, match="intra_weight"):
        LossConfig(intra_weight=-1.0)
    with pytest.raises(ValueError, match="region-word contrastive projection"):
        GLIPv2Criterion(LossConfig(use_inter=True), {"grounding": grounding_head()})


def synthetic_output(
    batch: int = 1, tokens: int = 6, channels: int = 8, text_dim: int = 12, seed: int = 0
) -> GLIPv2Output:
    """A GLIPv2Output of random tensors for a 64x64 input (levels 8x8, 4x4, 2x2, 1x1, 1x1)."""
    from glipv2.modeling.anchors import AnchorGenerator

    g = torch.Generator().manual_seed(seed)
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_()

    return GLIPv2Output(
        logits=[rand(batch, h * w, tokens) for h, w in sizes],
        box_regression=[rand(batch, 4, h, w) for h, w in sizes],
        centerness=[rand(batch, 1, h, w) for h, w in sizes],
        anchors=AnchorGenerator((64, 128, 256, 512, 1024), (8, 16, 32, 64, 128))(sizes),
        region_features=[rand(batch, channels, h, w) for h, w in sizes],
        token_features=rand(batch, tokens, text_dim),
        fused_region_features=[],
        fused_token_features=torch.zeros(0),
        token_embeddings=torch.zeros(0),
        text_attention_mask=torch.ones(batch, tokens, dtype=torch.long),
        image_sizes=torch.tensor([[64, 64]] * batch),
    )


def test_target_maps_are_fitted_to_the_token_slots() -> None:
    out = synthetic_output(tokens=6)
    crit = GLIPv2Criterion(LossConfig(), {"grounding": grounding_head()})
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    short = crit(out, [{"boxes": box, "positive_map": torch.tensor([[0.0, 1.0]])}])
    padded = crit(out, [{"boxes": box, "positive_map": torch.tensor([[0.0, 1.0, 0, 0, 0, 0, 0, 0]])}])
    assert short["loss"].item() == pytest.approx(padded["loss"].item())
    with pytest.raises(ValueError, match="past the model's 6 token slots"):
        crit(out, [{"boxes": box, "positive_map": torch.tensor([[0.0, 0, 0, 0, 0, 0, 0, 1]])}])
    with pytest.raises(ValueError, match="no 'positive_map'"):
        crit(out, [{"boxes": box}])
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        crit(out, [{"boxes": box, "positive_map": torch.ones(1, 6)}] * 2)
    inter = GLIPv2Criterion(
        LossConfig(use_inter=True), {"grounding": grounding_head(), "inter": inter_head(8, 12, 4)}
    )
    with pytest.raises(ValueError, match="token_labels"):
        inter(out, [{"boxes": box, "positive_map": torch.ones(1, 6), "labels": torch.tensor([1])}])


def test_all_background_batch() -> None:
    """No boxes at all: L_intra on every anchor (divided by the clamped 1), no L_loc, no L_inter."""
    out = synthetic_output(batch=2)
    crit = GLIPv2Criterion(
        LossConfig(use_inter=True), {"grounding": grounding_head(), "inter": inter_head(8, 12, 4)}
    )
    empty = {
        "boxes": torch.zeros(0, 4),
        "positive_map": torch.zeros(0, 6),
        "labels": torch.zeros(0, dtype=torch.long),
        "token_labels": torch.full((6,), -1),
    }
    losses = crit(out, [empty, empty])
    assert losses["loss_giou"].item() == 0 and losses["loss_centerness"].item() == 0
    assert losses["loss_inter"].item() == 0
    logits = torch.cat(out.logits, dim=1).detach()
    expected = sum(focal(v, 0) for v in logits.flatten().tolist())
    assert losses["loss_intra"].item() == pytest.approx(expected, rel=1e-4)
    losses["loss"].backward()
    assert all(t.grad is not None for t in out.logits + out.box_regression + out.centerness)


# --- the whole criterion on a tiny model ---------------------------------------------------------------
def phrase_map(offsets: torch.Tensor, prompt: str, phrase: str) -> torch.Tensor:
    """(T,) 1 on the tokens whose characters fall in the first occurrence of `phrase`."""
    start = prompt.index(phrase)
    end = start + len(phrase)
    return ((offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])).float()


@pytest.fixture(scope="module")
def tiny_model(tiny_config: Callable[..., GLIPv2Config]) -> GLIPv2:
    torch.manual_seed(0)
    config = tiny_config(region_word_contrastive_dim=16, mlm_head=True, pad_to_max_query_len=False)
    return GLIPv2(config).train()


@pytest.mark.parametrize("second_image_has_boxes", [True, False])
def test_end_to_end_on_a_tiny_model(tiny_model: GLIPv2, second_image_has_boxes: bool) -> None:
    from glipv2.data.mlm import mask_tokens

    model = tiny_model
    model.zero_grad(set_to_none=True)
    prompts = ["cat. dog. car.", "a red car. a small cat."]
    labels_of = {"cat": 1, "dog": 2, "car": 3}
    processor = GLIPv2Processor.from_config(model.config)
    tok = processor.tokenize(prompts)
    num_tokens = tok.input_ids.shape[1]
    g = torch.Generator().manual_seed(1)
    ids, mlm_labels = mask_tokens(
        tok.input_ids, tok.attention_mask, processor.tokenizer, probability=0.3, generator=g
    )

    def target(i: int, names: list[str]) -> dict[str, torch.Tensor]:
        xy = torch.rand(len(names), 2, generator=g) * 30
        boxes = torch.cat([xy, xy + 16 + torch.rand(len(names), 2, generator=g) * 30], dim=1)
        rows = [phrase_map(tok.offsets[i], prompts[i], name) for name in names]
        token_labels = torch.full((num_tokens,), -1)
        for name, label in labels_of.items():
            if name in prompts[i]:
                token_labels[phrase_map(tok.offsets[i], prompts[i], name) > 0] = label
        return {
            "boxes": boxes,
            "positive_map": torch.stack(rows) if rows else torch.zeros(0, num_tokens),
            "labels": torch.tensor([labels_of[n] for n in names], dtype=torch.long),
            "token_labels": token_labels,
            "mlm_labels": mlm_labels[i],
        }

    targets = [target(0, ["cat", "dog"]), target(1, ["car", "cat"] if second_image_has_boxes else [])]
    out = model(torch.randn(2, 3, 64, 72, generator=g), ids, tok.attention_mask)
    crit = GLIPv2Criterion(LossConfig.for_model(model.config), model.heads)
    losses = crit(out, targets)

    accuracy = losses.pop("token_accuracy")
    assert 0.0 <= accuracy.item() <= 1.0 and not accuracy.requires_grad
    assert set(losses) == {"loss_giou", "loss_centerness", "loss_intra", "loss_inter", "loss_mlm", "loss"}
    assert all(bool(torch.isfinite(v)) for v in losses.values()), losses
    assert all(v.item() > 0 for v in losses.values()), losses
    parts = sum(v for k, v in losses.items() if k != "loss")
    assert losses["loss"].item() == pytest.approx(parts.item(), rel=1e-6)
    assert not list(crit.parameters())  # the heads are referenced, not registered

    losses["loss"].backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    for prefix in (
        "core.backbone.",
        "core.fpn.",
        "core.fusion.",
        "heads.grounding.",
        "core.text_encoder.",
        "heads.inter.region.",
        "heads.inter.token.",
        "heads.inter.log_scale",
        "heads.mlm.",
    ):
        reached = [
            k for k, v in grads.items() if k.startswith(prefix) and v is not None and v.abs().sum() > 0
        ]
        assert reached, f"no gradient reaches {prefix}"
    assert all(bool(torch.isfinite(v).all()) for v in grads.values() if v is not None)
