"""The official ATSS post-processing, fed with the official run's recorded head outputs."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import batched_nms, nms

from glipv2 import GLIPv2Output
from glipv2.processing.postprocess import PostProcessor, RawDetections, legacy_nms

# FIXTURE.md positive_map_label_to_token {1: [1, 2], 2: [4, 5], 3: [7, 8]} over 256 slots
FIXTURE_TOKENS = [[1, 2], [4, 5], [7, 8]]


def fixture_positive_map() -> torch.Tensor:
    positive = torch.zeros(3, 256, dtype=torch.bool)
    for k, tokens in enumerate(FIXTURE_TOKENS):
        positive[k, tokens] = True
    return positive


def recorded_output(outputs: dict[str, Any]) -> GLIPv2Output:
    """A GLIPv2Output holding the official run's head outputs (features left empty)."""
    empty = torch.zeros(0)
    return GLIPv2Output(
        logits=outputs["dot_product_logits"],
        box_regression=outputs["box_regression"],
        centerness=outputs["centerness"],
        anchors=outputs["anchors"],
        region_features=[],
        token_features=empty,
        fused_region_features=[],
        fused_token_features=empty,
        token_embeddings=empty,
        text_attention_mask=empty,
        image_sizes=torch.tensor(outputs["image_sizes"]),
    )


def sort_candidates(d: RawDetections) -> torch.Tensor:
    """Rows (label, score, x1, y1, x2, y2) in a canonical order, for comparing candidate sets
    whose order inside a level is implementation-defined (unsorted top-k)."""
    rows = torch.cat([d.labels[:, None].double(), d.scores[:, None].double(), d.boxes.double()], dim=1)
    for column in (2, 1, 0):  # stable sorts: by label, then score, then x1
        rows = rows[torch.sort(rows[:, column], stable=True).indices]
    return rows


def test_pre_nms_candidates_match_the_official_set(fixture_outputs: dict[str, Any]) -> None:
    official = fixture_outputs["prenms"]
    ours = PostProcessor().candidates(recorded_output(fixture_outputs), 0, fixture_positive_map())
    assert len(ours) == 2020 == official["scores"].numel()
    theirs = RawDetections(official["boxes"], official["scores"], official["labels"] - 1)
    a, b = sort_candidates(ours), sort_candidates(theirs)
    assert torch.equal(a[:, 0], b[:, 0])
    torch.testing.assert_close(a[:, 1], b[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(a[:, 2:], b[:, 2:], atol=1e-3, rtol=0)


def test_final_detections_match_the_official_ones(fixture_outputs: dict[str, Any]) -> None:
    [ours] = PostProcessor()(recorded_output(fixture_outputs), [fixture_positive_map()])
    assert len(ours) == 100
    assert torch.equal(ours.labels + 1, fixture_outputs["labels"])  # same labels, same order
    # about three times the largest difference measured (boxes 3.1e-5, scores 2.4e-7; FIXTURE.md: 1e-3, 1e-5)
    torch.testing.assert_close(ours.scores, fixture_outputs["scores"], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.boxes, fixture_outputs["boxes"], atol=1e-4, rtol=0)


def test_nms_uses_the_legacy_plus_one_iou() -> None:
    """[0,0,4,4] vs [1,0,5,4]: IoU 20/30 = 0.67 with +1 sides (suppressed at 0.62), 12/20 = 0.6
    without (kept)."""
    boxes = torch.tensor([[0.0, 0, 4, 4], [1, 0, 5, 4]])
    scores = torch.tensor([0.9, 0.8])
    assert legacy_nms(boxes, scores, torch.tensor([0, 0]), 0.62).tolist() == [0]
    assert nms(boxes, scores, 0.62).tolist() == [0, 1]


def test_nms_is_per_label_and_returns_descending_scores() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.3, 0.9, 0.5, 0.7])
    labels = torch.tensor([0, 1, 0, 1])
    assert legacy_nms(boxes, scores, labels, 0.6).tolist() == [1, 3, 2]


def test_one_label_per_box_keeps_the_best_label_of_overlapping_boxes() -> None:
    # one object scored as "red circle" (0.9) and "red square" (0.6), a second box apart
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]])
    candidates = RawDetections(boxes, torch.tensor([0.9, 0.6, 0.5, 0.7]), torch.tensor([0, 1, 1, 1]))
    official = PostProcessor().select(candidates)
    assert official.labels.tolist() == [0, 1, 1]  # per-label NMS keeps a copy of the box per label
    kept = PostProcessor(one_label_per_box=True).select(candidates)
    assert kept.labels.tolist() == [0, 1] and kept.scores.tolist() == pytest.approx([0.9, 0.7])


def test_top_k_keeps_ties_at_the_cut() -> None:
    boxes = torch.tensor([[0.0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21], [30, 30, 31, 31]])
    candidates = RawDetections(boxes, torch.tensor([0.9, 0.5, 0.5, 0.1]), torch.zeros(4, dtype=torch.long))
    kept = PostProcessor(detections_per_image=2).select(candidates)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.5, 0.5])


def test_boxes_are_clipped_to_the_unpadded_image(fixture_outputs: dict[str, Any]) -> None:
    output = recorded_output(fixture_outputs)
    output.image_sizes = torch.tensor([[200, 150]])  # as if the image were padded from 150x200
    candidates = PostProcessor().candidates(output, 0, fixture_positive_map())
    assert candidates.boxes[:, 0::2].max() <= 149 and candidates.boxes[:, 1::2].max() <= 199
    assert candidates.boxes.min() >= 0


# --- legacy_nms against its reference, and why it is not torchvision.ops.batched_nms ------------------
def reference_legacy_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """legacy_nms as it was before the shared box helpers (kept here as the reference)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    grown = boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    kept = []
    for label in torch.unique(labels):
        index = torch.nonzero(labels == label).squeeze(1)
        kept.append(index[nms(grown[index], scores[index], iou_threshold)])
    keep = torch.cat(kept)
    order = torch.sort(scores[keep], descending=True, stable=True).indices
    return keep[order]


def greedy_legacy_nms(
    boxes: list[list[int]], scores: list[int], labels: list[int], iou_threshold: float
) -> list[int]:
    """The official semantics in exact arithmetic (integer boxes): per label, best score first and
    earlier index first among equal scores, drop boxes whose +1 IoU with a kept one exceeds the
    threshold; the kept boxes by descending score, then label, then index."""

    def iou(a: list[int], b: list[int]) -> Fraction:
        w = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        h = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        area = [(c[2] - c[0] + 1) * (c[3] - c[1] + 1) for c in (a, b)]
        return Fraction(w * h, area[0] + area[1] - w * h)

    kept: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
        if all(labels[k] != labels[i] or iou(boxes[k], boxes[i]) <= iou_threshold for k in kept):
            kept.append(i)
    return sorted(kept, key=lambda i: (-scores[i], labels[i], i))


def random_candidates(
    g: torch.Generator, n: int, num_labels: int, num_scores: int, span: float, integer: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n boxes in legacy xyxy with few distinct scores (many ties), a quarter of them copies of
    others (duplicates), over `num_labels` labels."""

    def draw(size: int, high: float) -> torch.Tensor:
        return (
            torch.randint(0, int(high), (n, size), generator=g).float()
            if integer
            else torch.rand(n, size, generator=g) * high
        )

    xy = draw(2, span)
    boxes = torch.cat([xy, xy + draw(2, 60)], dim=1)
    boxes[torch.randint(0, n, (n // 4,), generator=g)] = boxes[torch.randint(0, n, (n // 4,), generator=g)]
    scores = torch.randint(1, num_scores + 1, (n,), generator=g).float() / num_scores
    labels = torch.randint(0, num_labels, (n,), generator=g)
    return boxes, scores, labels


def test_legacy_nms_keeps_the_same_boxes_in_the_same_order_as_the_reference() -> None:
    """Seeded random candidate sets with ties and duplicates, on both sides of torchvision's
    1000-box switch inside batched_nms: kept set and order identical to the reference."""
    g = torch.Generator().manual_seed(0)
    for case in range(60):
        n = (
            int(torch.randint(1, 2500, (1,), generator=g))
            if case % 2
            else int(torch.randint(1, 80, (1,), generator=g))
        )
        boxes, scores, labels = random_candidates(
            g,
            n,
            num_labels=int(torch.randint(1, 200, (1,), generator=g)),
            num_scores=int(torch.randint(1, 6, (1,), generator=g)),
            span=float(torch.randint(10, 1333, (1,), generator=g)),
            integer=case % 3 == 0,
        )
        threshold = (0.0, 0.3, 0.5, 0.6, 0.7, 1.0)[case % 6]
        assert torch.equal(
            legacy_nms(boxes, scores, labels, threshold),
            reference_legacy_nms(boxes, scores, labels, threshold),
        ), case


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 12),
            st.integers(0, 12),
            st.integers(0, 8),
            st.integers(0, 8),
            st.integers(1, 3),
            st.integers(0, 2),
        ),
        max_size=30,
    ),
    st.sampled_from([0.0, 0.3001, 0.5001, 0.6001, 0.9001]),
)
def test_legacy_nms_is_the_official_greedy_nms_with_plus_one_ious(
    rows: list[tuple[int, int, int, int, int, int]], threshold: float
) -> None:
    """Small integer boxes on a 20-pixel grid (duplicates and equal scores are the rule): legacy_nms
    equals the reference and the exact-arithmetic greedy NMS (thresholds off every IoU of the grid,
    so float32 rounding cannot decide)."""
    boxes = [[x, y, x + w, y + h] for x, y, w, h, _, _ in rows]
    scores = [s for *_, s, _ in rows]
    labels = [label for *_, label in rows]
    t_boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    t_scores, t_labels = torch.tensor(scores, dtype=torch.float32) / 3, torch.tensor(labels, dtype=torch.long)
    ours = legacy_nms(t_boxes, t_scores, t_labels, threshold)
    assert torch.equal(ours, reference_legacy_nms(t_boxes, t_scores, t_labels, threshold))
    assert ours.tolist() == greedy_legacy_nms(boxes, scores, labels, threshold)


def test_batched_nms_orders_equal_scores_otherwise() -> None:
    """Why legacy_nms is not torchvision.ops.batched_nms (1): ties. Two separate boxes of equal
    score: ours orders them by label, batched_nms (one NMS over all boxes) by index."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    scores, labels = torch.tensor([0.5, 0.5]), torch.tensor([1, 0])
    assert legacy_nms(boxes, scores, labels, 0.6).tolist() == [1, 0]
    grown = boxes + boxes.new_tensor([0.0, 0, 1, 1])
    assert batched_nms(grown, scores, labels, 0.6).tolist() == [0, 1], (
        "batched_nms now orders ties like legacy_nms: see the comment in legacy_nms"
    )


def test_batched_nms_shifts_boxes_and_changes_the_kept_set() -> None:
    """Why legacy_nms is not torchvision.ops.batched_nms (2): it shifts each label's boxes by
    label x (max coordinate + 1); at label 999 of a 1333-pixel image float32 keeps 1/8 pixel, and
    an IoU of 0.5987 (kept at 0.6) becomes 0.6013 (dropped)."""
    boxes = torch.tensor(
        [
            [557.9778442382812, 458.57470703125, 605.47216796875, 506.06903076171875],
            [560.42626953125, 468.8179016113281, 607.9205932617188, 516.3121948242188],
            [0.0, 0.0, 1332.0, 1332.0],
        ]
    )
    scores, labels = torch.tensor([0.9, 0.8, 0.1]), torch.tensor([999, 999, 0])
    assert legacy_nms(boxes, scores, labels, 0.6).tolist() == [0, 1, 2]
    grown = boxes + boxes.new_tensor([0.0, 0, 1, 1])
    assert batched_nms(grown, scores, labels, 0.6).tolist() == [0, 2], (
        "batched_nms now keeps the same boxes here: see the comment in legacy_nms"
    )
