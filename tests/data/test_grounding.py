"""Training data: COCO json and grounding json as grounding samples, augmentations, collation."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from glipv2 import GLIPv2Processor
from glipv2.data.collate import GroundingCollator, SafeDataset, Skipped
from glipv2.data.grounding import (
    CocoGroundingDataset,
    GroundingSample,
    MdetrGroundingDataset,
    build_grounding_dataset,
    clean_category_name,
    label_id,
)
from glipv2.data.transforms import ColourJitter, RandomHorizontalFlip, RandomResize, swap_left_right

CATEGORIES = [
    {"id": 1, "name": "red_circle"},
    {"id": 2, "name": "blue square"},
    {"id": 5, "name": "star (shape)"},
    {"id": 7, "name": "cat"},
]


def write_coco(
    tmp_path: Path, annotations: list[dict[str, Any]], images: list[dict[str, Any]] | None = None
) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "images" / "a.png")
    images = images or [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def test_category_names_are_cleaned_as_official() -> None:
    assert clean_category_name("star_(shape)") == "star"
    assert clean_category_name("traffic_light") == "traffic light"
    assert label_id("Red  Circle") == label_id("red circle") != label_id("blue square")


def test_coco_image_becomes_a_class_prompt_with_negatives(tmp_path: Path) -> None:
    path = write_coco(
        tmp_path,
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [5, 5, 4, 4], "iscrowd": 0},
            {
                "id": 3,
                "image_id": 1,
                "category_id": 2,
                "bbox": [0, 0, 40, 30],
                "iscrowd": 1,
            },  # crowd: ignored
        ],
    )
    sample = CocoGroundingDataset(path, tmp_path / "images", max_categories=3, seed=0)[0]
    names = sample.caption.split(". ")
    assert len(names) == 3 and {"red circle", "blue square"} <= set(names)
    assert set(names) <= {"red circle", "blue square", "star", "cat"}
    assert sample.boxes.tolist() == [[1, 2, 10, 6], [5, 5, 8, 8]]  # legacy x2 = x + w - 1
    for box_label, name in zip(sample.box_labels.tolist(), ["red circle", "blue square"]):
        ((s, e),) = sample.phrases[box_label]
        assert sample.caption[s:e] == name
    assert len(sample.phrases) == 3  # the negative is a labelled phrase too (L_inter negatives)


def test_negatives_and_order_change_with_the_epoch_reproducibly(tmp_path: Path) -> None:
    path = write_coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 5]}])
    ds = CocoGroundingDataset(path, tmp_path / "images", max_categories=3, seed=3)
    captions = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        captions.append(ds[0].caption)
    ds.set_epoch(0)
    assert ds[0].caption == captions[0]
    assert len(set(captions)) > 1


def test_bad_boxes_are_dropped_and_counted(tmp_path: Path) -> None:
    path = write_coco(
        tmp_path,
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 100, 5, 5]},  # outside the 40x30 image
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [3, 3, 0, 4]},  # zero width
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [30, 20, 50, 50]},  # clipped
            {"id": 4, "image_id": 1, "category_id": 1},  # no bbox
            {"id": 5, "image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2]},  # unknown category
        ],
    )
    ds = CocoGroundingDataset(path, tmp_path / "images")
    sample = ds[0]
    assert sample.boxes.tolist() == [[30, 20, 39, 29]]
    assert ds.skips.as_dict() == {
        "box outside the image or without area": 2,
        "box without bbox/category_id": 1,
        "box with unknown category": 1,
    }


def test_grounding_json_and_auto_detection(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.png")
    caption = "a red circle left of a blue square and another red circle"
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 30, "width": 40, "caption": caption}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [1, 1, 5, 5], "tokens_positive": [[2, 12]]},
            {"id": 2, "image_id": 1, "bbox": [20, 1, 5, 5], "tokens_positive": [[23, 34]]},
            {"id": 3, "image_id": 1, "bbox": [10, 10, 5, 5], "tokens_positive": [[47, 57]]},
            {"id": 4, "image_id": 1, "bbox": [10, 10, 5, 5], "tokens_positive": [[50, 99]]},
        ],
    }
    path = tmp_path / "grounding.json"
    path.write_text(json.dumps(data))
    ds = build_grounding_dataset(path, tmp_path / "images")
    assert isinstance(ds, MdetrGroundingDataset)
    sample = ds[0]
    assert len(sample.boxes) == 3 and ds.skips.as_dict() == {"box with a span outside the caption": 1}
    assert (
        sample.box_labels[0] == sample.box_labels[2] == label_id("red circle")
    )  # same phrase, same identity
    assert sample.phrases[label_id("red circle")] == ((2, 12), (47, 57))


def test_flip_swaps_left_and_right_and_moves_spans() -> None:
    text = "the Left cat is right of the leftmost dog"
    spans = {1: ((0, 12),), 2: ((29, 41),), 3: ((16, 21),)}
    new, moved = swap_left_right(text, spans)
    assert new == "the Right cat is left of the rightmost dog"
    assert [new[s:e] for ((s, e),) in moved.values()] == ["the Right cat", "rightmost dog", "left"]


def make_sample() -> GroundingSample:
    image = Image.new("RGB", (40, 20), (10, 20, 30))
    image.putpixel((0, 0), (255, 0, 0))
    return GroundingSample(
        image,
        "a red dot on the left",
        torch.tensor([[0.0, 0.0, 9.0, 4.0]]),
        torch.tensor([label_id("red dot")]),
        {label_id("red dot"): ((2, 9),)},
    )


def test_flip_mirrors_image_and_boxes_with_the_legacy_convention() -> None:
    flipped = RandomHorizontalFlip(1.0)(make_sample(), random.Random(0))
    assert flipped.boxes.tolist() == [[30.0, 0.0, 39.0, 4.0]]  # x1' = W - x2 - 1
    assert flipped.image.getpixel((39, 0)) == (255, 0, 0)
    assert flipped.caption == "a red dot on the right"


def test_resize_scales_boxes_and_colour_jitter_keeps_hue() -> None:
    sample = make_sample()
    resized = RandomResize([40], 1000)(sample, random.Random(0))
    assert resized.image.size == (80, 40) and resized.boxes.tolist() == [[0.0, 0.0, 18.0, 8.0]]
    red = GroundingSample(
        Image.new("RGB", (8, 8), (200, 30, 30)),
        "red",
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
        {},
    )
    for seed in range(10):
        r, g, b = ColourJitter(0.3, 1.0)(red, random.Random(seed)).image.getpixel((3, 3))
        assert r > 2 * max(g, b)  # still red


def test_collate_builds_the_criterion_targets(tmp_path: Path, bert_tokenizer: Any) -> None:
    path = write_coco(
        tmp_path,
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 5]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [5, 5, 4, 4]},
        ],
    )
    ds = SafeDataset(CocoGroundingDataset(path, tmp_path / "images", max_categories=4))
    processor = GLIPv2Processor(bert_tokenizer, pad_to_max_query_len=False)
    batch = GroundingCollator(processor)([ds[0], Skipped("sample 9: corrupt"), ds[0]])
    assert batch is not None and len(batch) == 2 and batch.skipped == ["sample 9: corrupt"]
    target = batch.targets[0]
    assert target["positive_map"].shape == (2, batch.input_ids.shape[1])
    offsets = processor.tokenize(batch.captions[0]).offsets[0]
    for row, name in zip(target["positive_map"], ["red circle", "cat"]):
        words = [batch.captions[0][a:b] for (a, b), on in zip(offsets.tolist(), row.tolist()) if on]
        assert " ".join(words) == name
    labelled = target["token_labels"] >= 0
    assert int(labelled.sum()) == 6  # red circle (2) + blue square (2) + star (1) + cat (1); no separators
    assert set(target["token_labels"][labelled].tolist()) == {
        label_id(n) for n in ("red circle", "blue square", "star", "cat")
    }
    assert target["labels"].tolist() == [label_id("red circle"), label_id("cat")]


def test_a_corrupt_image_is_a_skipped_marker(tmp_path: Path) -> None:
    path = write_coco(tmp_path, [], images=[{"id": 1, "file_name": "missing.png"}])
    item = SafeDataset(CocoGroundingDataset(path, tmp_path / "images"))[0]
    assert isinstance(item, Skipped) and "missing.png" in item.reason
    with pytest.raises(ValueError, match="not a COCO-style json"):
        (tmp_path / "bad.json").write_text("[]")
        CocoGroundingDataset(tmp_path / "bad.json", tmp_path)


def test_a_span_starting_right_after_a_swapped_word_moves_with_it() -> None:
    new, moved = swap_left_right("the left-hand glove", {1: ((8, 19),), 2: ((4, 8),)})
    assert new == "the right-hand glove"
    assert [new[s:e] for ((s, e),) in moved.values()] == ["-hand glove", "right"]


def test_flip_gives_a_changed_phrase_its_new_identity() -> None:
    sample = GroundingSample(
        Image.new("RGB", (20, 10)),
        "the left dog and a cat",
        torch.tensor([[0.0, 0, 4, 4]] * 2),
        torch.tensor([label_id("the left dog"), label_id("cat")]),
        {label_id("the left dog"): ((0, 12),), label_id("cat"): ((19, 22),)},
        box_spans=[((0, 12),), ((19, 22),)],
    )
    flipped = RandomHorizontalFlip(1.0)(sample, random.Random(0))
    assert flipped.caption == "the right dog and a cat"
    assert flipped.box_labels.tolist() == [label_id("the right dog"), label_id("cat")]
    assert set(flipped.phrases) == {label_id("the right dog"), label_id("cat")}
    assert [flipped.caption[s:e] for ((s, e),) in flipped.box_spans] == ["the right dog", "cat"]


def test_each_grounding_box_targets_its_own_mention(tmp_path: Path, bert_tokenizer: Any) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.png")
    caption = "a dog and a dog"
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 30, "width": 40, "caption": caption}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [1, 1, 5, 5], "tokens_positive": [[2, 5]]},
            {"id": 2, "image_id": 1, "bbox": [20, 1, 5, 5], "tokens_positive": [[12, 15]]},
        ],
    }
    (tmp_path / "g.json").write_text(json.dumps(data))
    sample = MdetrGroundingDataset(tmp_path / "g.json", tmp_path / "images")[0]
    batch = GroundingCollator(GLIPv2Processor(bert_tokenizer, pad_to_max_query_len=False))([sample])
    target = batch.targets[0]
    # tokens: [CLS] a dog and a dog [SEP]: box 1 -> token 2, box 2 -> token 5; both share the identity
    assert [torch.nonzero(row).squeeze(1).tolist() for row in target["positive_map"]] == [[2], [5]]
    assert target["labels"].tolist() == [label_id("dog")] * 2
    assert (target["token_labels"] == label_id("dog")).nonzero().squeeze(1).tolist() == [2, 5]


def test_one_pixel_boxes_are_dropped_as_official() -> None:
    from glipv2.data.grounding import sanitize_boxes

    boxes = torch.tensor([[3.0, 3.0, 3.0, 8.0], [3.0, 3.0, 4.0, 8.0], [50.0, 1.0, 60.0, 5.0]])
    _, keep = sanitize_boxes(boxes, 40, 30)
    assert keep.tolist() == [False, True, False]


# --- instance masks ---------------------------------------------------------------------------------
def rle_of(mask: torch.Tensor, compressed: bool = True) -> dict[str, Any]:
    """COCO RLE of an (H, W) mask, compressed (a counts string) or not (column-major run lengths)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
        return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}
    flat = mask.t().reshape(-1).tolist()
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def test_coco_masks_are_decoded_from_polygons_and_rle(tmp_path: Path) -> None:
    square = torch.zeros(30, 40, dtype=torch.bool)
    square[5:10, 2:12] = True
    path = write_coco(
        tmp_path,
        [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [2, 5, 10, 5],
                "segmentation": [[2, 5, 12, 5, 12, 10, 2, 10]],
            },
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [2, 5, 10, 5], "segmentation": rle_of(square)},
            {
                "id": 3,
                "image_id": 1,
                "category_id": 5,
                "bbox": [2, 5, 10, 5],
                "segmentation": rle_of(square, False),
            },
            {"id": 4, "image_id": 1, "category_id": 7, "bbox": [2, 5, 10, 5]},  # no segmentation: dropped
            {
                "id": 5,
                "image_id": 1,
                "category_id": 7,
                "bbox": [2, 5, 10, 5],
                "segmentation": [[1, 2]],
            },  # no polygon
            {
                "id": 6,
                "image_id": 1,
                "category_id": 7,
                "bbox": [2, 5, 10, 5],
                "segmentation": {"size": [10, 10], "counts": [100]},
            },  # another image's size
        ],
    )
    dataset = CocoGroundingDataset(path, tmp_path / "images", max_categories=4, with_masks=True)
    sample = dataset[0]
    assert sample.masks is not None and sample.masks.dtype == torch.bool and sample.masks.shape == (3, 30, 40)
    for mask in sample.masks:
        assert torch.equal(mask, square)
    assert dataset.skips.as_dict() == {"box without a usable segmentation": 3}
    # without with_masks the segmentation is not read (and the box without one is kept)
    assert CocoGroundingDataset(path, tmp_path / "images", max_categories=4)[0].masks is None


def test_resize_and_flip_move_masks_with_their_boxes() -> None:
    image = Image.new("RGB", (40, 20), (10, 20, 30))
    mask = torch.zeros(1, 20, 40, dtype=torch.bool)
    mask[0, 2:6, 1:9] = True  # the box's pixels, x 1..8, y 2..5
    sample = GroundingSample(
        image,
        "a dot on the left",
        torch.tensor([[1.0, 2.0, 8.0, 5.0]]),
        torch.tensor([label_id("dot")]),
        {label_id("dot"): ((2, 5),)},
        masks=mask,
    )
    for transform in (RandomResize([40], 1000), RandomHorizontalFlip(1.0)):
        out = transform(sample, random.Random(0))
        assert out.masks is not None and out.masks.shape[1:] == (out.image.size[1], out.image.size[0])
        ys, xs = torch.nonzero(out.masks[0], as_tuple=True)
        x1, y1, x2, y2 = out.boxes[0].tolist()
        # the mask fills its box to within a pixel (legacy +1 box size, nearest resampling)
        assert abs(xs.min() - x1) <= 1 and abs(xs.max() - x2) <= 1, (xs.min(), xs.max(), x1, x2)
        assert abs(ys.min() - y1) <= 1 and abs(ys.max() - y2) <= 1, (ys.min(), ys.max(), y1, y2)


def test_collate_keeps_the_masks_of_the_kept_boxes(tmp_path: Path, bert_tokenizer: Any) -> None:
    polygon = [[1, 2, 11, 2, 11, 7, 1, 7]]
    path = write_coco(
        tmp_path,
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 5], "segmentation": polygon},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 7,
                "bbox": [5, 5, 4, 4],
                "segmentation": [[5, 5, 9, 5, 9, 9, 5, 9]],
            },
        ],
    )
    ds = SafeDataset(CocoGroundingDataset(path, tmp_path / "images", max_categories=4, with_masks=True))
    batch = GroundingCollator(GLIPv2Processor(bert_tokenizer, pad_to_max_query_len=False))([ds[0]])
    assert batch is not None
    target = batch.targets[0]
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (2, 30, 40)
    assert target["masks"].sum(dim=(1, 2)).tolist() == [50, 16]  # 10x5 and 4x4 pixels
