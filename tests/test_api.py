"""The Python API as users of the field expect it: transformers-pipeline results, `plot()` / `save()`
on detections, `to_coco()` for one image, the model's own default threshold, `from_pretrained`
accepting what `load_model` and `--model` accept, and eval-mode models from `build_model`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, make_tiny_config
from PIL import Image

import glipv2
from glipv2 import GLIPv2, GLIPv2Processor, Predictor
from glipv2.inference import Detections, visualize
from glipv2.loading import load_model, local_model_files
from glipv2.processing.processor import PROCESSOR_NAME
from glipv2.utils.shipped import DEFAULT_SHIPPED_MODEL, list_shipped_models, shipped_model_dir

NAMES = ["red circle", "blue square"]
needs_shipped = pytest.mark.skipif(
    DEFAULT_SHIPPED_MODEL not in list_shipped_models(), reason="no shipped weights in this installation"
)


@pytest.fixture
def detections(
    make_predictor: Callable[..., Predictor], random_image: Callable[..., Image.Image]
) -> Detections:
    found = make_predictor().detect(random_image(0, (80, 60)), NAMES, threshold=0.0)
    assert isinstance(found, Detections) and len(found) > 3
    return found


# --- transformers pipeline results ----------------------------------------------------------------
def test_to_transformers_is_the_zero_shot_object_detection_pipeline_result(detections: Detections) -> None:
    from transformers.pipelines.zero_shot_object_detection import ZeroShotObjectDetectionPipeline

    results = detections.to_transformers()
    assert len(results) == len(detections)
    for result, box, score, label in zip(
        results, detections.boxes, detections.scores.tolist(), detections.label_names
    ):
        assert list(result) == ["score", "label", "box"]
        assert list(result["box"]) == ["xmin", "ymin", "xmax", "ymax"]
        assert type(result["score"]) is float and type(result["label"]) is str
        assert all(type(v) is int for v in result["box"].values())
        # the pipeline's own conversion of a box tensor (it reads no pipeline state)
        assert result["box"] == ZeroShotObjectDetectionPipeline._get_bounding_box(None, box)  # type: ignore[arg-type]
        assert (result["score"], result["label"]) == (score, label)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    json.dumps(results)


# --- plot / save ----------------------------------------------------------------------------------
def test_detections_keep_their_image_and_plot_it(
    detections: Detections, random_image: Callable[..., Image.Image]
) -> None:
    image = random_image(0, (80, 60))
    assert detections.image is not None and detections.image.size == (80, 60)
    drawn = detections.plot()
    assert isinstance(drawn, Image.Image) and drawn.size == (80, 60)
    assert drawn.tobytes() == visualize.draw_detections(image, detections).tobytes()
    assert drawn.tobytes() != image.tobytes()  # boxes were drawn
    assert detections[:2].image is detections.image  # slicing keeps it
    # the image is no part of the JSON-ready results
    assert all(set(d) == {"box_xyxy", "score", "label", "label_index"} for d in detections.to_dict())
    assert "image" not in repr(detections)


def test_plot_without_a_kept_image_takes_one_or_says_so(
    detections: Detections, random_image: Callable[..., Image.Image]
) -> None:
    bare = Detections(detections.boxes, detections.scores, detections.labels, NAMES, (60, 80))
    with pytest.raises(ValueError, match="hold no image"):
        bare.plot()
    assert bare.plot(random_image(0, (80, 60))).size == (80, 60)
    with pytest.raises(ValueError, match="the detections are for 80x60"):
        bare.plot(random_image(0, (81, 60)))


def test_save_writes_the_annotated_image_atomically(detections: Detections, tmp_path: Path) -> None:
    png = detections.save(tmp_path / "out" / "dets.png")
    with Image.open(png) as written:
        assert written.format == "PNG" and written.tobytes() == detections.plot().tobytes()
    with Image.open(detections.save(tmp_path / "dets.JPG")) as written:
        assert written.format == "JPEG"
    with pytest.raises(ValueError, match="unknown image type"):
        detections.save(tmp_path / "dets.txt")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["dets.JPG", "dets.png"]


def test_save_refuses_to_overwrite_the_source_image(
    make_predictor: Callable[..., Predictor], random_image: Callable[..., Image.Image], tmp_path: Path
) -> None:
    source = tmp_path / "in.png"
    random_image(1, (80, 60)).save(source)
    before = source.read_bytes()
    found = make_predictor().detect(str(source), NAMES, threshold=0.0)
    assert found.image_path == source and found.image is not None
    with pytest.raises(ValueError, match="refusing to overwrite"):
        found.save(source)
    assert source.read_bytes() == before


def test_drawing_functions_are_public_api() -> None:
    for name in ("draw_detections", "draw_text_banner"):
        assert getattr(glipv2, name) is getattr(visualize, name)
        assert getattr(glipv2.inference, name) is getattr(visualize, name)
        assert name in glipv2.__all__ and name in glipv2.inference.__all__


# --- to_coco --------------------------------------------------------------------------------------
def test_to_coco_without_an_image_id_is_image_0(detections: Detections) -> None:
    entries = detections.to_coco()
    assert entries == detections.to_coco(image_id=0)
    assert len(entries) == len(detections) and {e["image_id"] for e in entries} == {0}


# --- the default threshold ------------------------------------------------------------------------
def test_no_threshold_means_the_processors_box_threshold(
    tiny_model: GLIPv2, random_image: Callable[..., Image.Image]
) -> None:
    from glipv2.processing.postprocess import PostProcessor

    image = random_image(2, (80, 60))
    everything = PostProcessor(inference_threshold=0.0)
    probe = Predictor(
        tiny_model,
        GLIPv2Processor.from_config(tiny_model.config, min_size=64, max_size=96),
        postprocessor=everything,
    )
    median = float(probe.detect(image, NAMES, threshold=0.0).scores.median())  # type: ignore[union-attr]
    processor = GLIPv2Processor.from_config(tiny_model.config, min_size=64, max_size=96, box_threshold=median)
    predictor = Predictor(tiny_model, processor, postprocessor=everything)
    default, explicit = predictor.detect(image, NAMES), predictor.detect(image, NAMES, threshold=median)
    assert 0 < len(default) == len(explicit) and bool((default.scores > median).all())  # type: ignore[union-attr]
    assert len(predictor.ground(image, "a red circle")) == len(  # type: ignore[arg-type]
        predictor.ground(image, "a red circle", threshold=median)  # type: ignore[arg-type]
    )
    with pytest.raises(ValueError, match="threshold must lie in"):
        predictor.detect(image, NAMES, threshold=1.5)


def test_box_threshold_is_saved_with_the_processor(tiny_model: GLIPv2, tmp_path: Path) -> None:
    assert GLIPv2Processor.from_config(tiny_model.config).box_threshold == 0.5  # official-style default
    GLIPv2Processor.from_config(tiny_model.config, box_threshold=0.25).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / PROCESSOR_NAME).read_text())
    assert saved["box_threshold"] == 0.25
    assert GLIPv2Processor.from_pretrained(tmp_path).box_threshold == 0.25
    # a processor config written before the setting existed: 0.5
    del saved["box_threshold"]
    (tmp_path / PROCESSOR_NAME).write_text(json.dumps(saved))
    assert GLIPv2Processor.from_pretrained(tmp_path).box_threshold == 0.5
    with pytest.raises(ValueError, match="box_threshold"):
        GLIPv2Processor.from_config(tiny_model.config, box_threshold=2.0)


@needs_shipped
def test_the_shipped_weights_carry_their_measured_threshold() -> None:
    processor = GLIPv2Processor.from_pretrained(DEFAULT_SHIPPED_MODEL)  # by name, as the model
    assert processor.box_threshold == 0.35


# --- from_pretrained / load_model accept the same names ---------------------------------------------
def test_from_pretrained_builds_a_preset_with_the_loud_warning(capsys: pytest.CaptureFixture[str]) -> None:
    model = GLIPv2.from_pretrained("glip_t", **TINY_OVERRIDES)
    assert "RANDOM weights" in capsys.readouterr().err
    assert model.config == make_tiny_config() and not model.training
    GLIPv2.from_pretrained("glip_t", warn=False, **TINY_OVERRIDES)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="load_model"):
        GLIPv2.from_pretrained("checkpoint.pth")


@needs_shipped
def test_a_shipped_model_loads_by_name_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = shipped_model_dir(DEFAULT_SHIPPED_MODEL)
    for load in (GLIPv2.from_pretrained, load_model):
        model = load(DEFAULT_SHIPPED_MODEL)
        assert model.name_or_path == str(folder) and not model.training
    # --out / --viz checks see the shipped files as inputs they must not overwrite
    assert local_model_files(DEFAULT_SHIPPED_MODEL) == local_model_files(str(folder))
    assert folder is not None and folder / "model.safetensors" in local_model_files(DEFAULT_SHIPPED_MODEL)
    # a local folder of the same name wins: a path is a path
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    GLIPv2(make_tiny_config()).save_pretrained(tmp_path / DEFAULT_SHIPPED_MODEL)
    local = GLIPv2.from_pretrained(DEFAULT_SHIPPED_MODEL)
    assert local.name_or_path == DEFAULT_SHIPPED_MODEL and local.config == make_tiny_config()


def test_build_model_returns_an_eval_mode_model() -> None:
    model = glipv2.build_model("glip_t", **TINY_OVERRIDES)
    assert not any(m.training for m in model.modules())
