"""ATSS target assignment: a hand-computed example (candidates, mean + std thresholds, the
centre-inside rule, max-IoU resolution), the legacy IoU, centerness targets, and invariants on
real anchors checked against a direct per-box re-derivation."""

from __future__ import annotations

import math
from fractions import Fraction
from statistics import mean, stdev

import pytest
import torch

from glipv2.modeling.anchors import AnchorGenerator
from glipv2.modeling.heads.atss import atss_assign, centerness_targets
from glipv2.utils.boxes import box_iou_legacy

# Two "levels" along a row: three 10x10 anchors, then two 20x20 anchors (legacy: x2 = x1 + size - 1).
A0, A1, A2 = [0, 0, 9, 9], [10, 0, 19, 9], [20, 0, 29, 9]  # centres (4.5, 4.5), (14.5, 4.5), (24.5, 4.5)
B0, B1 = [0, 0, 19, 19], [20, 0, 39, 19]  # centres (9.5, 9.5), (29.5, 9.5)
ANCHORS = torch.tensor([A0, A1, A2, B0, B1], dtype=torch.float32)
PER_LEVEL = [3, 2]
TOPK = 2  # two candidates per level and box

G0 = [9, 0, 21, 9]  # centre (15, 4.5); area 13*10 = 130
G1 = [20, 0, 24, 9]  # centre (22, 4.5); area 5*10 = 50 — A2's centre (24.5) lies outside (x2 = 24)
G1B = [20, 0, 25, 9]  # centre (22.5, 4.5); area 6*10 = 60 — A2's centre inside by 0.5
G2 = [10, 0, 20, 9]  # centre (15, 4.5); area 11*10 = 110
GTS = torch.tensor([G0, G1, G1B, G2], dtype=torch.float32)

# By hand, per box: its candidates (the 2 closest centres of each level) and their legacy IoUs.
#   G0:  level 0: A1 (0.5), A2 (9.5) [A0 10.5];  level 1: B0 (7.4), B1 (15.3)
#        IoU A1 = 10*10/(100+130-100), A2 = 2*10/(100+130-20), B0 = 11*10/(400+130-110), B1 = 2*10/(400+130-20)
#   G1:  level 0: A2 (2.5), A1 (7.5);  level 1: B1 (9.0), B0 (13.5)
#        IoU A2 = 5*10/(100+50-50), A1 = 0, B1 = 50/400, B0 = 0
#   G1B: level 0: A2 (2.0), A1 (8.0);  level 1: B1 (8.6), B0 (13.9)
#        IoU A2 = 60/100, A1 = 0, B1 = 60/400, B0 = 0
#   G2:  level 0: A1 (0.5), A2 (9.5);  level 1: B0 (7.4), B1 (15.3)
#        IoU A1 = 100/110, A2 = 1*10/(100+110-10), B0 = 10*10/(400+110-100), B1 = 10/(400+110-10)
HAND = {
    0: {1: Fraction(100, 130), 2: Fraction(20, 210), 3: Fraction(110, 420), 4: Fraction(20, 510)},
    1: {2: Fraction(50, 100), 1: Fraction(0), 4: Fraction(50, 400), 3: Fraction(0)},
    2: {2: Fraction(60, 100), 1: Fraction(0), 4: Fraction(60, 400), 3: Fraction(0)},
    3: {1: Fraction(100, 110), 2: Fraction(10, 200), 3: Fraction(100, 410), 4: Fraction(10, 500)},
}


def centre_inside(anchor: list[int], box: list[int], margin: float = 0.01) -> bool:
    cx, cy = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
    return min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > margin


def test_legacy_iou_matches_the_hand_values() -> None:
    ious = box_iou_legacy(ANCHORS, GTS)
    for g, candidates in HAND.items():
        for a, value in candidates.items():
            assert ious[a, g].item() == pytest.approx(float(value), abs=1e-6), (a, g)
    # identical boxes: 1; touching boxes share a pixel column under the +1 convention
    box = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    assert box_iou_legacy(box, box).item() == 1.0
    assert box_iou_legacy(box, torch.tensor([[9.0, 0.0, 18.0, 9.0]])).item() == pytest.approx(10 / 190)


def test_hand_example() -> None:
    anchors = [A0, A1, A2, B0, B1]
    boxes = [G0, G1, G1B, G2]
    # thresholds (mean + unbiased std of the candidates' IoUs) and positives, by hand
    positives: dict[int, dict[int, float]] = {}  # anchor -> {box: IoU}
    for g, candidates in HAND.items():
        values = [float(v) for v in candidates.values()]
        threshold = mean(values) + stdev(values)
        for a, iou in candidates.items():
            if float(iou) >= threshold and centre_inside(anchors[a], boxes[g]):
                positives.setdefault(a, {})[g] = float(iou)
    # what the hand computation gives: A1 for G0 (0.77) and G2 (0.91), A2 for G1B only (G1: centre outside)
    assert positives == {
        1: {0: pytest.approx(100 / 130), 3: pytest.approx(100 / 110)},
        2: {2: pytest.approx(0.6)},
    }
    expected = [-1, 3, 2, -1, -1]  # A1 keeps its highest-IoU box G2

    out = atss_assign(ANCHORS, PER_LEVEL, GTS, topk=TOPK)
    assert out.matched_gt.tolist() == expected
    assert out.num_positive == 2
    assert out.positive.tolist() == [m >= 0 for m in expected]

    # regression targets of the matched box, by hand with the legacy coder (widths x2 - x1 + 1,
    # centres (x1 + x2) / 2, weights 10, 10, 5, 5); 0 for background:
    #   A1 [10, 0, 19, 9] (w 10, h 10, centre (14.5, 4.5)) -> G2 [10, 0, 20, 9] (w 11, h 10, (15, 4.5)):
    #     (10 * 0.5 / 10, 0, 5 ln(11/10), 5 ln 1) = (0.5, 0, 5 ln 1.1, 0)
    #   A2 [20, 0, 29, 9] (w 10, h 10, centre (24.5, 4.5)) -> G1B [20, 0, 25, 9] (w 6, h 10, (22.5, 4.5)):
    #     (10 * -2 / 10, 0, 5 ln(6/10), 0) = (-2, 0, 5 ln 0.6, 0)
    expected_regression = torch.zeros(5, 4)
    expected_regression[1] = torch.tensor([0.5, 0.0, 5 * math.log(1.1), 0.0])
    expected_regression[2] = torch.tensor([-2.0, 0.0, 5 * math.log(0.6), 0.0])
    torch.testing.assert_close(out.regression_targets, expected_regression, atol=1e-6, rtol=1e-6)
    # centerness of the anchor centre in its box, by hand:
    #   A1 (14.5, 4.5) in G2 [10, 0, 20, 9]: l=4.5 r=5.5 t=4.5 b=4.5 -> sqrt(4.5/5.5)
    #   A2 (24.5, 4.5) in G1B [20, 0, 25, 9]: l=4.5 r=0.5 t=b=4.5 -> sqrt(0.5/4.5) = 1/3
    torch.testing.assert_close(
        out.centerness_targets, torch.tensor([0.0, math.sqrt(4.5 / 5.5), 1 / 3, 0.0, 0.0])
    )


def test_a_box_whose_anchor_centre_is_outside_gets_no_positive() -> None:
    # G1 alone: A2 passes the IoU threshold (0.5 >= 0.39) but its centre is 0.5 px right of the box
    out = atss_assign(ANCHORS, PER_LEVEL, torch.tensor([G1], dtype=torch.float32), topk=TOPK)
    assert out.num_positive == 0
    values = [float(v) for v in HAND[1].values()]
    assert float(HAND[1][2]) >= mean(values) + stdev(values)


def test_without_boxes_everything_is_background() -> None:
    out = atss_assign(ANCHORS, PER_LEVEL, torch.zeros(0, 4), topk=TOPK)
    assert out.matched_gt.tolist() == [-1] * 5 and out.num_positive == 0
    assert out.regression_targets.shape == (5, 4) and not out.regression_targets.any()
    assert out.centerness_targets.shape == (5,) and not out.centerness_targets.any()


def test_centerness_targets_by_hand() -> None:
    points = torch.tensor([[5.0, 5.0], [2.0, 8.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    # centre of the box: 1; (2, 8): l=2 r=8 t=8 b=2 -> sqrt(2/8 * 2/8) = 0.25
    torch.testing.assert_close(centerness_targets(points, boxes), torch.tensor([1.0, 0.25]))


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="does not sum"):
        atss_assign(ANCHORS, [3, 3], GTS)
    with pytest.raises(ValueError, match=r"\(A, 4\)"):
        atss_assign(ANCHORS[:, :3], [3, 2], GTS)


def reference_positives(
    anchors: torch.Tensor, per_level: list[int], boxes: torch.Tensor, topk: int
) -> list[int]:
    """A direct re-derivation, one box and one level at a time, in float64 Python (the legacy +1
    IoU written out here, not the library's `box_iou_legacy`)."""

    def legacy_iou(a: list[float], b: list[float]) -> float:
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
        area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        return iw * ih / (area_a + area_b - iw * ih)

    centres = [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in anchors.tolist()]
    ious = [[legacy_iou(a, b) for b in boxes.tolist()] for a in anchors.tolist()]
    best: dict[int, tuple[float, int]] = {}
    for g, box in enumerate(boxes.tolist()):
        gx, gy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        candidates, start = [], 0
        for count in per_level:
            level = sorted(range(start, start + count), key=lambda i: math.dist(centres[i], (gx, gy)))
            candidates += level[:topk]
            start += count
        values = [ious[i][g] for i in candidates]
        threshold = mean(values) + stdev(values)
        for i in candidates:
            cx, cy = centres[i]
            inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > 0.01
            if ious[i][g] >= threshold and inside and ious[i][g] > best.get(i, (-1.0, -1))[0]:
                best[i] = (ious[i][g], g)
    matched = [-1] * anchors.shape[0]
    for i, (_, g) in best.items():
        matched[i] = g
    return matched


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_real_anchors_match_a_direct_derivation(seed: int) -> None:
    """Official anchors of a 200x160 input (5 levels, 9 candidates per level and box)."""
    sizes = [(25, 20), (13, 10), (7, 5), (4, 3), (2, 2)]
    anchors = torch.cat(AnchorGenerator((64, 128, 256, 512, 1024), (8, 16, 32, 64, 128))(sizes))
    per_level = [h * w for h, w in sizes]
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(6, 2, generator=g) * torch.tensor([120.0, 150.0])
    wh = 8 + torch.rand(6, 2, generator=g) * 70
    boxes = torch.cat([xy, xy + wh], dim=1)

    out = atss_assign(anchors, per_level, boxes)
    assert out.matched_gt.tolist() == reference_positives(anchors, per_level, boxes, topk=9)
    assert 0 < out.num_positive <= 9 * 5 * len(boxes)
    # every positive's centre is inside its box and its targets decode back to it
    pos = out.positive
    centres = torch.stack([(anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2], 1)[pos]
    matched = boxes[out.matched_gt[pos]]
    assert bool((centres > matched[:, :2] + 0.01).all() and (centres < matched[:, 2:] - 0.01).all())
    assert bool((out.centerness_targets[pos] > 0).all() and (out.centerness_targets[pos] <= 1).all())
