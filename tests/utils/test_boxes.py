"""Box conventions (glipv2.utils.boxes): legacy +1 and plain COCO geometry."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glipv2.utils.boxes import box_iou_legacy, clip_to_image, legacy_to_plain, xywh_to_xyxy, xyxy_to_xywh


def test_legacy_boxes_end_on_their_last_pixel() -> None:
    xywh = torch.tensor([[10.0, 20.0, 5.0, 3.0]])
    assert xywh_to_xyxy(xywh, legacy=True).tolist() == [[10.0, 20.0, 14.0, 22.0]]
    assert xywh_to_xyxy(xywh).tolist() == [[10.0, 20.0, 15.0, 23.0]]
    assert xyxy_to_xywh(torch.tensor([[10.0, 20.0, 14.0, 22.0]]), legacy=True).tolist() == [
        [10.0, 20.0, 5.0, 3.0]
    ]
    assert xyxy_to_xywh(torch.tensor([[10.0, 20.0, 15.0, 23.0]])).tolist() == [[10.0, 20.0, 5.0, 3.0]]
    assert legacy_to_plain(torch.tensor([[10.0, 20.0, 14.0, 22.0]])).tolist() == [[10.0, 20.0, 15.0, 23.0]]


@pytest.mark.parametrize("legacy", [True, False])
def test_conversions_keep_leading_dimensions_and_round_trip(legacy: bool) -> None:
    g = torch.Generator().manual_seed(0)
    xywh = torch.rand(2, 3, 4, generator=g, dtype=torch.float64) * 100
    xyxy = xywh_to_xyxy(xywh, legacy=legacy)
    assert xyxy.shape == (2, 3, 4) and xyxy.dtype == torch.float64
    torch.testing.assert_close(xyxy_to_xywh(xyxy, legacy=legacy), xywh, rtol=0, atol=1e-12)
    assert xywh_to_xyxy(torch.zeros(0, 4), legacy=legacy).shape == (0, 4)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=4, max_size=4), st.booleans())
def test_float64_gives_the_numbers_of_python_float_arithmetic(box: list[float], legacy: bool) -> None:
    """What callers that used Python floats rely on, to the last bit."""
    one = 1 if legacy else 0
    x, y, w, h = box
    assert xywh_to_xyxy(torch.tensor(box, dtype=torch.float64), legacy=legacy).tolist() == [
        x,
        y,
        x + w - one,
        y + h - one,
    ]
    x1, y1, x2, y2 = box
    assert xyxy_to_xywh(torch.tensor(box, dtype=torch.float64), legacy=legacy).tolist() == [
        x1,
        y1,
        x2 - x1 + one,
        y2 - y1 + one,
    ]


def test_clip_to_image_keeps_boxes_on_the_last_pixel_and_copies() -> None:
    boxes = torch.tensor([[-5.0, -1.0, 300.0, 90.5], [10.0, 10.0, 20.0, 20.0]])
    clipped = clip_to_image(boxes, (80, 200))  # (height, width)
    assert clipped.tolist() == [[0.0, 0.0, 199.0, 79.0], [10.0, 10.0, 20.0, 20.0]]
    assert boxes[0, 0] == -5.0  # the input is left alone


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(*[st.integers(0, 30)] * 4), min_size=1, max_size=6),
    st.lists(st.tuples(*[st.integers(0, 30)] * 4), min_size=1, max_size=6),
)
def test_box_iou_legacy_is_the_plus_one_iou(
    first: list[tuple[int, ...]], second: list[tuple[int, ...]]
) -> None:
    def box(t: tuple[int, ...]) -> list[int]:
        x, y, w, h = t
        return [x, y, x + w, y + h]  # legacy: spans w + 1 pixels

    def exact(a: list[int], b: list[int]) -> Fraction:
        iw = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        ih = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        areas = [(c[2] - c[0] + 1) * (c[3] - c[1] + 1) for c in (a, b)]
        return Fraction(iw * ih, areas[0] + areas[1] - iw * ih)

    a, b = [box(t) for t in first], [box(t) for t in second]
    ious = box_iou_legacy(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    assert ious.shape == (len(a), len(b))
    expected = torch.tensor([[float(exact(p, q)) for q in b] for p in a], dtype=torch.float64)
    torch.testing.assert_close(ious, expected, rtol=1e-12, atol=0)
