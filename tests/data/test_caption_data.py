"""CaptionDataset: the COCO captions and Karpathy-split layouts (with the split filter), the captions
ShapesWorld writes, malformed records skipped and counted, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from glipv2.data import CaptionDataset, CaptionSample, generate_shapes_world
from glipv2.data.grounding import SkipCounter


def _write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


COCO_CAPTIONS: dict[str, Any] = {
    "info": {},
    "images": [
        {"id": 9, "file_name": "nine.jpg", "width": 16, "height": 12},
        {"id": 3, "file_name": "three.jpg", "width": 10, "height": 10},
        {"id": 5, "file_name": "five.jpg"},  # no caption: skipped
    ],
    "annotations": [
        {"id": 1, "image_id": 3, "caption": "A cat on a mat."},
        {"id": 2, "image_id": 9, "caption": "  Two dogs run.\n"},
        {"id": 3, "image_id": 3, "caption": "a sleeping cat"},
    ],
}


@pytest.fixture()
def coco_images(tmp_path: Path) -> Path:
    for name, size in (("nine.jpg", (16, 12)), ("three.jpg", (10, 10)), ("five.jpg", (4, 4))):
        Image.new("RGB", size, (0, 90, 200)).save(tmp_path / name)
    return tmp_path


def test_coco_captions_one_sample_per_image(coco_images: Path) -> None:
    path = _write(coco_images / "captions.json", COCO_CAPTIONS)
    dataset = CaptionDataset(path, coco_images)
    dataset.set_epoch(1)
    assert len(dataset) == 2 and dataset.ann_file == path
    assert dataset.skips.as_dict() == {"image without a usable caption": 1}
    assert dataset.references() == {9: ["Two dogs run."], 3: ["A cat on a mat.", "a sleeping cat"]}
    sample = dataset[1]
    assert isinstance(sample, CaptionSample)
    assert (sample.image_id, sample.file_name, sample.captions) == (
        3,
        "three.jpg",
        ["A cat on a mat.", "a sleeping cat"],
    )
    assert sample.image.mode == "RGB" and sample.image.size == (10, 10)
    assert sample.meta["path"] == str(coco_images / "three.jpg")
    with pytest.raises(ValueError, match="no splits"):
        CaptionDataset(path, coco_images, split="train")


KARPATHY: dict[str, Any] = {
    "dataset": "coco",
    "images": [
        {
            "filepath": "train2014",
            "filename": "t.jpg",
            "split": "train",
            "cocoid": 11,
            "imgid": 0,
            "sentences": [
                {"raw": "A train.", "tokens": ["a", "train"]},
                {"raw": "", "tokens": ["a", "rail"]},
            ],
        },
        {
            "filepath": "val2014",
            "filename": "r.jpg",
            "split": "restval",
            "cocoid": 12,
            "sentences": [{"raw": "Restval image."}],
        },
        {
            "filepath": "val2014",
            "filename": "v.jpg",  # not under val2014/: found in the image folder itself
            "split": "val",
            "cocoid": 13,
            "sentences": [{"raw": "A val image."}],
        },
        {
            "filename": "e.jpg",
            "split": "test",
            "imgid": 4,
            "sentences": [{"raw": "Flickr style, no cocoid."}],
        },
    ],
}


@pytest.fixture()
def karpathy(tmp_path: Path) -> tuple[Path, Path]:
    for folder, name in (("train2014", "t.jpg"), ("val2014", "r.jpg"), ("", "v.jpg"), ("", "e.jpg")):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.new("RGB", (6, 5)).save(tmp_path / folder / name)
    return _write(tmp_path / "dataset_coco.json", KARPATHY), tmp_path


def test_karpathy_layout_and_split_filter(karpathy: tuple[Path, Path]) -> None:
    path, images = karpathy
    everything = CaptionDataset(path, images)
    assert everything.references() == {
        11: ["A train.", "a rail"],  # a blank raw falls back to the tokens
        12: ["Restval image."],
        13: ["A val image."],
        4: ["Flickr style, no cocoid."],
    }
    train = CaptionDataset(path, images, split="train")
    assert list(train.references()) == [11, 12]  # train takes restval too
    assert train[0].meta == {
        "path": str(images / "train2014" / "t.jpg"),
        "split": "train",
        "filepath": "train2014",
    }
    assert train[1].file_name == "r.jpg" and train[1].meta["path"] == str(images / "val2014" / "r.jpg")
    val = CaptionDataset(path, images, split="val")
    assert list(val.references()) == [13]
    assert val[0].meta["path"] == str(images / "v.jpg") and val[0].image.size == (6, 5)
    assert list(CaptionDataset(path, images, split="test").references()) == [4]
    assert not train.skips.as_dict() and not val.skips.as_dict()
    with pytest.raises(ValueError, match="unknown split 'tset'"):
        CaptionDataset(path, images, split="tset")


def test_shapes_world_captions_read(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    summary = generate_shapes_world(out, 3, seed=2, split="train")
    dataset = CaptionDataset(out / "captions.json", out / "images")
    assert len(dataset) == 3 and not dataset.skips.as_dict()
    references = dataset.references()
    assert list(references) == [1, 2, 3] and all(len(c) == 5 for c in references.values())
    assert sum(len(c) for c in references.values()) == summary["num_captions"] == 15
    sample = dataset[2]
    assert sample.file_name == "train_000002.png" and len(sample.captions) == 5
    assert sample.image.size == Image.open(out / "images" / "train_000002.png").size


def test_bad_records_are_skipped_and_counted(coco_images: Path, karpathy: tuple[Path, Path]) -> None:
    document = {
        "images": [
            *COCO_CAPTIONS["images"],
            {"id": 3, "file_name": "again.jpg"},
            {"id": True, "file_name": "x"},
            7,
        ],
        "annotations": [
            *COCO_CAPTIONS["annotations"],
            None,
            {"image_id": 404, "caption": "nobody's"},
            {"image_id": [3], "caption": "unhashable"},
            {"image_id": 9, "caption": 12},
            {"image_id": 9, "caption": "   "},
        ],
    }
    skips = SkipCounter()
    dataset = CaptionDataset(_write(coco_images / "bad.json", document), coco_images, skips=skips)
    assert dataset.skips is skips and len(dataset) == 2
    assert skips.as_dict() == {
        "duplicate image id": 1,
        "image entry without an integer or string id and a file_name": 2,
        "caption of an unknown image": 3,
        "caption that is not a non-empty string": 2,
        "image without a usable caption": 1,
    }

    path, images = karpathy
    bad = json.loads(path.read_text())
    bad["images"] += [
        "not an image",
        {"filename": "t.jpg", "sentences": []},  # no id
        {"cocoid": 11, "filename": "t.jpg", "split": "train", "sentences": [{"raw": "dup"}]},
        {"cocoid": 20, "filename": "z.jpg", "filepath": 5, "sentences": []},
        {"cocoid": 21, "filename": "z.jpg", "split": "train", "sentences": [None, {"tokens": [1]}]},
        {"cocoid": 22, "filename": "z.jpg", "split": "train"},
    ]
    dataset = CaptionDataset(_write(images / "bad_karpathy.json", bad), images, split="train")
    assert list(dataset.references()) == [11, 12]
    assert dataset.skips.as_dict() == {
        "image entry that is not an object": 1,
        "image entry without a cocoid/imgid and a filename": 1,
        "duplicate image id": 1,
        "image entry with a filepath or split that is not a string": 1,
        "sentence without raw text or tokens": 2,
        "image entry without a 'sentences' list": 1,
        "image without a usable caption": 2,
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json at all", r"c\.json: caption annotation file is not a JSON file"),
        (b"[]", r"c\.json: not a captions json"),
        (b'{"annotations": []}', r"c\.json: not a captions json"),
        (b'{"images": [], "annotations": {}}', r"c\.json: 'annotations' must be a list"),
        (b'{"images": [{"id": 1, "file_name": "a.jpg"}]}', r"c\.json: neither a COCO captions json"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        CaptionDataset(path, tmp_path)


def test_a_missing_image_fails_only_its_sample(coco_images: Path) -> None:
    (coco_images / "nine.jpg").unlink()
    dataset = CaptionDataset(_write(coco_images / "captions.json", COCO_CAPTIONS), coco_images)
    assert dataset[1].image_id == 3
    with pytest.raises(ValueError, match="nine.jpg"):
        dataset[0]
