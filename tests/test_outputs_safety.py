"""Outputs never destroy inputs or other files (issue 25, item 1).

Every command that writes (`predict --out/--viz`, `eval --out` and its predictions file,
`convert OUT_DIR`, `data shapes --out`, `demo --out`) refuses, before any work, a destination that
is or would overwrite one of its inputs, a symlink / FIFO at the destination, and an unwritable
destination; `convert --overwrite` replaces only a glipv2 model folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURE_DIR, make_tiny_config
from PIL import Image

import glipv2
from glipv2.cli import main
from glipv2.data.shapes_world import generate_shapes_world
from glipv2.utils import io

SMALL = ["--size", "64,96"]  # random weights: only the plumbing is under test


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = glipv2.GLIPv2(make_tiny_config(pad_to_max_query_len=False))
    return model.save_pretrained(tmp_path_factory.mktemp("model"))


def write_image(path: Path, seed: int = 0) -> Path:
    pixels = np.random.RandomState(seed).randint(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def one_line_error(capsys: pytest.CaptureFixture[str], prefix: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(prefix) and "Traceback" not in err, err
    return err


def predict(model_dir: Path, *args: str) -> int:
    return main(["predict", *args, "--model", str(model_dir), "--classes", "cat,dog", *SMALL])


# --- the shared checks ----------------------------------------------------------------------------
def test_check_destination_refuses_inputs_links_and_special_files(tmp_path: Path) -> None:
    check_destination, DestinationError = io.check_destination, io.DestinationError
    image = write_image(tmp_path / "a.png")
    (tmp_path / "link.json").symlink_to(image)
    os.mkfifo(tmp_path / "fifo")
    cases = {
        image: "is the input",
        tmp_path / "link.json": "symlink",
        tmp_path / "fifo": "FIFO",
        tmp_path: "is a folder",
        image / "x.json": "cannot write there",
    }
    for destination, message in cases.items():
        with pytest.raises(DestinationError, match=message):
            check_destination(destination, [image], "--out")
    with pytest.raises(DestinationError, match="holds the input"):
        check_destination(tmp_path, [image], "--viz", folder=True)
    assert check_destination(tmp_path / "new" / "r.json", [image]) == tmp_path / "new" / "r.json"
    assert not (tmp_path / "new").exists()  # the probe creates nothing that stays


def test_atomic_writes_never_replace_a_symlink(tmp_path: Path) -> None:
    DestinationError = getattr(io, "DestinationError", ValueError)
    target = tmp_path / "target.txt"
    target.write_text("keep")
    (tmp_path / "link.txt").symlink_to(target)
    with pytest.raises(DestinationError, match="symlink"):
        io.atomic_write_text(tmp_path / "link.txt", "new")
    with pytest.raises(DestinationError, match="symlink"), io.atomic_path(tmp_path / "link.txt"):
        pass
    assert (tmp_path / "link.txt").is_symlink() and target.read_text() == "keep"


# --- predict ----------------------------------------------------------------------------------------
def test_predict_out_that_is_an_input_image_is_refused(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_image(tmp_path / "a.png")
    before = image.read_bytes()
    (tmp_path / "alias.png").symlink_to(image)
    for out in (image, tmp_path / "sub" / ".." / "a.png"):
        assert predict(model_dir, str(image), "--out", str(out)) == 2
        assert "--out" in one_line_error(capsys, "glipv2 predict: ")
    # the same file reached through a symlink as the input
    assert predict(model_dir, str(tmp_path / "alias.png"), "--out", str(image)) == 2
    one_line_error(capsys, "glipv2 predict: ")
    assert image.read_bytes() == before


def test_predict_out_over_a_model_file_is_refused(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_image(tmp_path / "a.png")
    model_dir = Path(shutil.copytree(model_dir, tmp_path / "model"))  # the shared one stays intact
    config = (model_dir / "config.json").read_bytes()
    assert predict(model_dir, str(image), "--out", str(model_dir / "config.json")) == 2
    one_line_error(capsys, "glipv2 predict: --out")
    assert (model_dir / "config.json").read_bytes() == config


def test_predict_out_symlink_or_fifo_is_refused_not_replaced(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_image(tmp_path / "a.png")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("{}")
    (tmp_path / "link.json").symlink_to(elsewhere)
    os.mkfifo(tmp_path / "fifo.json")
    for out, kind in ((tmp_path / "link.json", "symlink"), (tmp_path / "fifo.json", "FIFO")):
        assert predict(model_dir, str(image), "--out", str(out)) == 2
        assert kind in one_line_error(capsys, "glipv2 predict: --out")
    assert (tmp_path / "link.json").is_symlink() and elsewhere.read_text() == "{}"
    assert (tmp_path / "fifo.json").is_fifo()


def test_predict_viz_folder_holding_an_input_image_is_refused(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "photos").mkdir()
    image = write_image(tmp_path / "photos" / "a.png")
    before = image.read_bytes()
    out = tmp_path / "r.json"
    assert predict(model_dir, str(image), "--out", str(out), "--viz", str(tmp_path / "photos")) == 2
    assert "--viz" in one_line_error(capsys, "glipv2 predict: ")
    assert image.read_bytes() == before and not out.exists()  # refused before any work


def test_predict_unwritable_viz_is_found_before_the_work(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_image(tmp_path / "a.png")
    (tmp_path / "file").write_text("")
    out = tmp_path / "r.json"
    assert predict(model_dir, str(image), "--out", str(out), "--viz", str(tmp_path / "file" / "viz")) == 2
    one_line_error(capsys, "glipv2 predict: --viz")
    assert not out.exists()


def test_predict_viz_png_over_a_symlink_is_refused(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_image(tmp_path / "a.png")
    (tmp_path / "viz").mkdir()
    keep = tmp_path / "keep.png"
    keep.write_bytes(b"mine")
    (tmp_path / "viz" / "a.png").symlink_to(keep)
    out = tmp_path / "r.json"
    assert predict(model_dir, str(image), "--out", str(out), "--viz", str(tmp_path / "viz")) == 2
    assert "symlink" in one_line_error(capsys, "glipv2 predict: --viz")
    assert keep.read_bytes() == b"mine" and not out.exists()


def test_predict_writes_as_before(model_dir: Path, tmp_path: Path) -> None:
    image = write_image(tmp_path / "a.png")
    out = tmp_path / "r.json"
    assert predict(model_dir, str(image), "--out", str(out), "--viz", str(tmp_path / "viz")) == 0
    assert json.loads(out.read_text())["images"][0]["file"] == str(image)
    assert [p.name for p in (tmp_path / "viz").iterdir()] == ["a.png"]  # no temporary file left


# --- eval -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate_shapes_world(out, 2, seed=5, split="val")
    return out


def test_eval_out_equal_to_the_annotations_or_predictions_is_refused(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann = tmp_path / "instances.json"
    shutil.copyfile(shapes / "instances.json", ann)
    predictions = tmp_path / "p.json"
    predictions.write_text(
        json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}])
    )
    before = ann.read_bytes(), predictions.read_bytes()
    for out in (ann, predictions):
        args = ["eval", "coco", "--predictions", str(predictions), "--ann", str(ann), "--out", str(out)]
        assert main(args) == 2
        assert "is the input" in one_line_error(capsys, "glipv2 eval: --out")
    assert (ann.read_bytes(), predictions.read_bytes()) == before


def test_eval_predictions_file_over_the_annotations_is_refused(
    shapes: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann = tmp_path / "m_predictions.json"  # what --out m.json would write its predictions to
    shutil.copyfile(shapes / "instances.json", ann)
    before = ann.read_bytes()
    args = ["eval", "coco", "--model", str(model_dir), "--ann", str(ann), "--images", str(shapes / "images")]
    assert main([*args, "--out", str(tmp_path / "m.json"), *SMALL]) == 2
    one_line_error(capsys, "glipv2 eval: the predictions file")
    assert ann.read_bytes() == before and not (tmp_path / "m.json").exists()


# --- convert ----------------------------------------------------------------------------------------
def convert(src: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "convert",
            str(src),
            str(out),
            "--official-config",
            str(FIXTURE_DIR / "config_full.yaml"),
            "--text-config",
            str(FIXTURE_DIR / "tiny_bert_config.json"),
            *extra,
        ]
    )


def test_convert_overwrite_replaces_only_a_model_folder(
    fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "ckpt" / "glip.pth"
    src.parent.mkdir()
    shutil.copyfile(fixture_dir / "glip_tiny_random.pth", src)
    (tmp_path / "ckpt" / "notes.txt").write_text("mine")
    # the checkpoint's own folder: never deleted
    assert convert(src, src.parent, "--overwrite") == 2
    assert "holds the input" in one_line_error(capsys, "glipv2 convert: ")
    # an unrelated folder
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"jpeg")
    assert convert(src, other, "--overwrite") == 2
    assert "not a glipv2 model folder" in one_line_error(capsys, "glipv2 convert: ")
    assert src.is_file() and (tmp_path / "ckpt" / "notes.txt").read_text() == "mine"
    assert (other / "a.jpg").read_bytes() == b"jpeg"
    # a model folder is replaced; one with a file of the user's in it is not
    model = tmp_path / "model"
    assert convert(src, model) == 0
    assert convert(src, model, "--overwrite") == 0
    (model / "results.json").write_text("{}")
    assert convert(src, model, "--overwrite") == 2
    assert "results.json" in one_line_error(capsys, "glipv2 convert: ")
    assert (model / "results.json").read_text() == "{}"
    # the output is the checkpoint itself
    assert convert(src, src, "--overwrite") == 2
    one_line_error(capsys, "glipv2 convert: ")
    assert src.read_bytes() == (fixture_dir / "glip_tiny_random.pth").read_bytes()


def test_convert_out_dir_symlink_is_refused(
    fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    assert convert(fixture_dir / "glip_tiny_random.pth", model) == 0
    capsys.readouterr()
    (tmp_path / "link").symlink_to(model)
    assert convert(fixture_dir / "glip_tiny_random.pth", tmp_path / "link", "--overwrite") == 2
    assert "symlink" in one_line_error(capsys, "glipv2 convert: ")
    assert (tmp_path / "link").is_symlink() and (model / "model.safetensors").is_file()


# --- data shapes ------------------------------------------------------------------------------------
def test_data_shapes_never_leaves_images_and_json_that_disagree(tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert main(["data", "shapes", "--out", str(out), "--num-images", "3"]) == 0
    assert main(["data", "shapes", "--out", str(out), "--num-images", "2"]) == 0  # replaced whole
    listed = {i["file_name"] for i in json.loads((out / "instances.json").read_text())["images"]}
    assert {p.name for p in (out / "images").iterdir()} == listed and len(listed) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary folder left


def test_data_shapes_refuses_a_folder_with_other_files_or_a_symlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    assert main(["data", "shapes", "--out", str(mine), "--num-images", "1"]) == 2
    one_line_error(capsys, "glipv2 data shapes: ")
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    (tmp_path / "link").symlink_to(mine)
    assert main(["data", "shapes", "--out", str(tmp_path / "link"), "--num-images", "1"]) == 2
    assert "symlink" in one_line_error(capsys, "glipv2 data shapes: ")


# --- demo -------------------------------------------------------------------------------------------
def test_demo_out_that_is_a_file_is_one_line_before_any_work(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert main(["demo", "--weights", str(model_dir), "--out", str(out)]) == 2
    one_line_error(capsys, "glipv2 demo: --out")
    assert out.read_text() == "mine"
