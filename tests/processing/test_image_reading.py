"""Images are read as a viewer shows them (issue 25, item 4): EXIF orientation applied, with sizes
and boxes in the displayed frame; 16-bit and float images scaled over their full range; palette,
grey+alpha, CMYK and animations as before; a directory named as an image says so; `eval` skips an
unreadable image (named, counted) and scores the rest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glipv2.data import grounding
from glipv2.data.grounding import CocoGroundingDataset
from glipv2.evaluation.base import Benchmark, EvalSample, ResultsEvaluator, run_benchmark
from glipv2.inference.detections import Detections
from glipv2.processing.processor import load_image

ORIENTATION = 0x0112


def stored_photo(path: Path, orientation: int, size: tuple[int, int] = (100, 40)) -> np.ndarray:
    """A (height, width) = (40, 100) bitmap with a red block at its top-left corner, saved as PNG
    with an EXIF orientation tag; returns the stored pixels."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:10, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    return pixels


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    # orientation 6: "rotate 90 degrees clockwise to view" — the upright photo is 40 wide, 100 high
    path = tmp_path / "photo.png"
    stored = stored_photo(path, 6)
    shown = np.asarray(load_image(path))
    assert shown.shape == (100, 40, 3)
    np.testing.assert_array_equal(shown, np.rot90(stored, k=-1))
    # the red block, top-left when stored, is at the top-right of the upright photo
    assert tuple(shown[0, -1]) == (255, 0, 0) and tuple(shown[-1, 0]) == (0, 0, 0)
    # a PIL image given directly is turned as well
    with Image.open(path) as image:
        assert load_image(image).size == (40, 100)
    # the stored frame on request
    assert load_image(path, exif_orientation=False).size == (100, 40)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(tmp_path: Path, orientation: int) -> None:
    from PIL import ImageOps

    path = tmp_path / f"o{orientation}.png"
    stored_photo(path, orientation)
    with Image.open(path) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image(path)), expected)


def test_processor_sizes_are_in_the_displayed_frame(tmp_path: Path, bert_tokenizer: object) -> None:
    from glipv2.processing.processor import GLIPv2Processor

    path = tmp_path / "photo.png"
    stored_photo(path, 8)  # rotate 90 counter-clockwise to view
    processor = GLIPv2Processor(bert_tokenizer, resize=False)  # type: ignore[arg-type]
    tensor, (height, width) = processor.prepare_image(path)
    assert (height, width) == (100, 40) and tuple(tensor.shape) == (3, 100, 40)


def test_sixteen_bit_images_use_the_full_range(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as opened:
        assert opened.mode.startswith("I")  # a 16-bit file, not an 8-bit one
    grey = np.asarray(load_image(path))[0, :, 0]
    np.testing.assert_array_equal(grey, [0, 1, 128, 255])  # today: [0, 255, 255, 255]
    big_endian = Image.frombytes("I;16B", (4, 1), values.astype(">u2").tobytes())
    np.testing.assert_array_equal(np.asarray(load_image(big_endian))[0, :, 0], [0, 1, 128, 255])
    as_int32 = Image.fromarray(values.astype(np.int32))  # mode "I" holding 16-bit data
    np.testing.assert_array_equal(np.asarray(load_image(as_int32))[0, :, 0], [0, 1, 128, 255])


def test_float_images_use_the_full_range(tmp_path: Path) -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(load_image(unit))[0, :, 0], [0, 128, 255])  # today: [0, 0, 1]
    wide = np.array([[-10.0, 0.0, 30.0, np.nan]], dtype=np.float32)  # not in [0, 1]: min..max
    path = tmp_path / "float.tif"
    Image.fromarray(wide).save(path)
    np.testing.assert_array_equal(np.asarray(load_image(path))[0, :, 0], [0, 64, 255, 0])


def test_other_modes_as_before(tmp_path: Path) -> None:
    rgb = np.random.RandomState(0).randint(0, 255, (6, 5, 3), dtype=np.uint8)
    for mode in ("P", "LA", "CMYK", "RGBA", "L", "1"):
        image = Image.fromarray(rgb).convert(mode)
        np.testing.assert_array_equal(np.asarray(load_image(image)), np.asarray(image.convert("RGB")))
    frames = [Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    first = np.asarray(load_image(tmp_path / "anim.gif"))
    assert first.shape == (6, 8, 3) and first[0, 0, 0] > 200 and first[0, 0, 1] < 50


def test_a_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory, not an image file"):
        load_image(tmp_path)


def test_broken_exif_is_ignored_like_a_viewer(tmp_path: Path) -> None:
    path = tmp_path / "bad_exif.jpg"
    Image.new("RGB", (10, 4)).save(path, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    assert load_image(path).size == (10, 4)


# --- training data: boxes in the frame the annotations were made in --------------------------------
def coco_json(tmp_path: Path, width: int, height: int, bbox: list[float]) -> Path:
    ann = tmp_path / f"ann_{width}x{height}.json"
    ann.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "photo.png", "width": width, "height": height}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox, "iscrowd": 0}],
                "categories": [{"id": 1, "name": "block"}],
            }
        )
    )
    return ann


def test_training_reader_uses_the_displayed_frame(tmp_path: Path) -> None:
    stored_photo(tmp_path / "photo.png", 6)
    # annotated upright (40 x 100, as a viewer and the COCO exporters of annotation tools show it):
    # the red block is at the top-right, x 30..40, y 0..20
    sample = CocoGroundingDataset(coco_json(tmp_path, 40, 100, [30, 0, 10, 20]), tmp_path)[0]
    assert sample.image.size == (40, 100)
    x1, y1, x2, y2 = sample.boxes[0].round().int().tolist()
    assert np.asarray(sample.image)[y1:y2, x1:x2].mean(axis=(0, 1)).tolist() == [255, 0, 0]


def test_training_reader_follows_a_json_made_in_the_stored_frame(tmp_path: Path) -> None:
    stored_photo(tmp_path / "photo.png", 6)
    # width/height of the stored bitmap: the annotator saw it sideways, and so do the boxes
    sample = CocoGroundingDataset(coco_json(tmp_path, 100, 40, [0, 0, 20, 10]), tmp_path)[0]
    assert sample.image.size == (100, 40)
    x1, y1, x2, y2 = sample.boxes[0].round().int().tolist()
    assert np.asarray(sample.image)[y1:y2, x1:x2].mean(axis=(0, 1)).tolist() == [255, 0, 0]
    assert grounding.load_annotated_image(tmp_path / "photo.png", {}).size == (40, 100)  # no sizes: displayed


# --- eval: one unreadable image is named and counted, the rest scored -------------------------------
class CountingEvaluator(ResultsEvaluator):
    def to_results(self, sample: EvalSample, detections: Detections) -> list[dict]:
        return [{"image_id": sample.image_id, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}]

    def score(self, results: list[dict], image_ids: list[int]) -> dict:
        return {"images": image_ids, "entries": len(results)}

    def known_image_ids(self) -> list[int]:
        return [1, 2, 3]


class FakePredictor:
    postprocessor = object()

    def detection_vocabulary(self, classes: list[str], chunk_size: int | None = None) -> str:
        return "vocabulary"

    def predict(self, images: list, vocabularies: list, **kwargs: object) -> list[Detections]:
        for image in images:
            load_image(image)  # the real predictor reads its inputs the same way
        empty = torch.zeros(0, 4)
        return [
            Detections(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), [], (8, 8)) for _ in images
        ]


def test_eval_skips_an_unreadable_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a.png", "c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    samples = [
        EvalSample(tmp_path / name, i, classes=("thing",))
        for i, name in enumerate(["a.png", "b.png", "c.png"], 1)
    ]
    benchmark = Benchmark("toy", samples, CountingEvaluator(distributed=False))
    metrics = run_benchmark(FakePredictor(), benchmark, batch_size=2, progress=False)
    assert metrics["images"] == [1, 3] and metrics["entries"] == 2
    assert metrics["unreadable_images"] == 1
    err = capsys.readouterr().err
    assert "b.png: cannot read the image" in err and "1 of 3 image(s) unreadable" in err
