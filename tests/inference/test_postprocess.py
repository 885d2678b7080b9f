"""The official ATSS post-processing, fed with the official run's recorded head outputs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from glipv2 import GLIPv2Output
from glipv2.inference import PostProcessor, RawDetections, legacy_nms

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
        logits=outputs["dot_product_logits"], box_regression=outputs["box_regression"],
        centerness=outputs["centerness"], anchors=outputs["anchors"], region_features=[], token_features=empty,
        fused_region_features=[], fused_token_features=empty, token_embeddings=empty, text_attention_mask=empty,
        image_sizes=torch.tensor(outputs["image_sizes"]))


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
    torch.testing.assert_close(ours.scores, fixture_outputs["scores"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.boxes, fixture_outputs["boxes"], atol=1e-3, rtol=0)


def test_nms_uses_the_legacy_plus_one_iou() -> None:
    """[0,0,4,4] vs [1,0,5,4]: IoU 20/30 = 0.67 with +1 sides (suppressed at 0.62), 12/20 = 0.6
    without (kept)."""
    boxes = torch.tensor([[0.0, 0, 4, 4], [1, 0, 5, 4]])
    scores = torch.tensor([0.9, 0.8])
    assert legacy_nms(boxes, scores, torch.tensor([0, 0]), 0.62).tolist() == [0]
    from torchvision.ops import nms
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
