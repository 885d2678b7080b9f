"""The Predictor: official detections on the parity fixture, per-image prompts, chunking, the
text cache, results in original pixels and their exports."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from glipv2 import Detections, GLIPv2, GLIPv2Processor, Predictor
from glipv2.processing.postprocess import PostProcessor
from glipv2.processing.prompts import DETECTION_SEPARATOR

FIXTURE_CAPTION = "red circle. blue square. green triangle."
FIXTURE_PHRASES = ["red circle", "blue square", "green triangle"]
LVIS_NAMES = Path(__file__).resolve().parents[1] / "data" / "lvis_v1_category_names.txt"


def assert_same_detections(
    ours: Detections,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    box_atol: float = 1e-3,
    score_atol: float = 1e-5,
) -> None:
    assert len(ours) == len(scores)
    assert ours.labels.tolist() == labels.tolist()
    torch.testing.assert_close(ours.scores, scores, atol=score_atol, rtol=0)
    torch.testing.assert_close(ours.boxes, boxes, atol=box_atol, rtol=0)


def assert_same_detections_up_to_ties(ours: Detections, theirs: Detections) -> None:
    """As `assert_same_detections`, but two candidates whose scores differ by float rounding (1e-8:
    a random model scores similar names alike) may come in either order: both sides are compared
    sorted by label, then score."""

    def canonical(dets: Detections) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        by_score = torch.sort(dets.scores, descending=True, stable=True).indices
        order = by_score[torch.sort(dets.labels[by_score], stable=True).indices]
        return dets.boxes[order], dets.scores[order], dets.labels[order]

    assert len(ours) == len(theirs)
    boxes, scores, labels = canonical(theirs)
    mine_boxes, mine_scores, mine_labels = canonical(ours)
    assert mine_labels.tolist() == labels.tolist()
    torch.testing.assert_close(mine_scores, scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine_boxes, boxes, atol=1e-3, rtol=0)


# --- parity ----------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["phrases", "spans"])
def test_fixture_detections_through_the_python_api(
    fixture_predictor: Predictor, fixture_dir: Path, fixture_outputs: dict[str, Any], how: str
) -> None:
    kwargs: dict[str, Any] = (
        {"phrases": FIXTURE_PHRASES} if how == "phrases" else {"spans": [(0, 10), (12, 23), (25, 39)]}
    )
    dets = fixture_predictor.ground(fixture_dir / "input.png", FIXTURE_CAPTION, threshold=0.0, **kwargs)
    assert isinstance(dets, Detections)
    assert_same_detections(
        dets, fixture_outputs["boxes"], fixture_outputs["scores"], fixture_outputs["labels"] - 1
    )
    assert dets.names == FIXTURE_PHRASES and dets.image_size == (256, 256)
    assert dets.label_names[:3] == ["blue square", "red circle", "green triangle"]  # FIXTURE.md
    assert dets.above(0.6).scores.min() >= 0.6


# --- batches and prompts -------------------------------------------------------------------------
def test_each_image_of_a_batch_may_carry_its_own_prompt(
    make_predictor: Callable[..., Predictor], random_image: Callable[..., Image.Image]
) -> None:
    # same size: padding a smaller image to a batch changes its features (official code too)
    images = [random_image(1, (80, 60)), random_image(2, (80, 60))]
    classes = [["cat", "dog"], ["a very long vehicle name", "tree", "house", "lamp"]]
    batched = make_predictor(batch_size=2).detect(images, classes, threshold=0.0)
    single = make_predictor(batch_size=1)
    for image, names, dets in zip(images, classes, batched):
        alone = single.detect(image, names, threshold=0.0)
        assert dets.names == names and len(dets) > 0
        assert_same_detections(dets, alone.boxes, alone.scores, alone.labels, box_atol=1e-3, score_atol=1e-5)


def test_single_image_gives_one_result_a_list_gives_a_list(
    make_predictor: Callable[..., Predictor], random_image: Callable[..., Image.Image]
) -> None:
    predictor = make_predictor()
    assert isinstance(predictor.detect(random_image(0), ["cat"]), Detections)
    results = predictor.detect([random_image(0), random_image(1)], ["cat"])
    assert isinstance(results, list) and len(results) == 2


def test_grounding_with_one_caption_per_image(
    make_predictor: Callable[..., Predictor], random_image: Callable[..., Image.Image]
) -> None:
    predictor = make_predictor()
    results = predictor.ground(
        [random_image(0), random_image(1)],
        ["a cat on a mat", "two dogs, one ball"],
        phrases=[["cat", "mat"], None],
        threshold=0.0,
    )
    assert results[0].names == ["cat", "mat"] and results[1].names == ["two dogs", "one ball"]
    assert set(results[1].labels.tolist()) <= {0, 1}


def test_boxes_come_back_in_original_pixels(
    make_predictor: Callable[..., Predictor], random_image: Callable[..., Image.Image]
) -> None:
    """An image resized 2x for the model: the reported boxes are the model-frame boxes / 2."""
    predictor = make_predictor()
    image = random_image(3, (48, 32))  # shorter side 32 -> 64: a 2x upscale
    tensor, original = predictor.processor.prepare_image(image)
    assert tensor.shape[1:] == (64, 96) and original == (32, 48)
    vocabulary = predictor.detection_vocabulary(["cat", "dog"])
    [raw] = predictor._run([tensor], [vocabulary.chunks[0].prompt])
    dets = predictor.detect(image, ["cat", "dog"], threshold=0.0)
    order = torch.sort(raw.scores, descending=True, stable=True).indices
    torch.testing.assert_close(dets.boxes, raw.boxes[order] / 2)
    assert dets.boxes[:, 0::2].max() <= 48 and dets.boxes[:, 1::2].max() <= 32


# --- long vocabularies ---------------------------------------------------------------------------
def test_each_chunk_equals_a_separate_run_on_its_prompt(
    tiny_config: Callable[..., Any],
    make_predictor: Callable[..., Predictor],
    random_image: Callable[..., Image.Image],
) -> None:
    torch.manual_seed(1)
    model = GLIPv2(tiny_config(max_query_len=24, pad_to_max_query_len=False)).eval()
    predictor = make_predictor(model)
    names = [f"object number {i}" for i in range(12)]  # 3 chunks of at most 24 tokens
    image = random_image(4)
    vocabulary = predictor.detection_vocabulary(names)
    assert [c.label_offset for c in vocabulary.chunks] == [0, 5, 10]
    merged = predictor.detect(image, names, threshold=0.0)
    assert merged.names == names
    assert torch.all(merged.scores[:-1] >= merged.scores[1:])
    for chunk in vocabulary.chunks:
        alone = predictor.detect(image, list(chunk.prompt.names), threshold=0.0)
        in_chunk = (merged.labels >= chunk.label_offset) & (
            merged.labels < chunk.label_offset + chunk.prompt.num_labels
        )
        part = merged[in_chunk]
        assert len(part) == min(100, len(alone)) and len(alone) > 0
        assert_same_detections(part, alone.boxes, alone.scores, alone.labels + chunk.label_offset)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_backbone_runs_once_per_image_for_all_its_chunks(
    tiny_config: Callable[..., Any],
    make_predictor: Callable[..., Predictor],
    random_image: Callable[..., Image.Image],
    batch_size: int,
) -> None:
    """Two images, 3 chunk prompts each: backbone and FPN run twice (batch 1: once per image;
    batch 2: a batch holds two chunks of one image, since jobs are grouped by image), and the
    detections are those of one image alone."""
    torch.manual_seed(1)
    model = GLIPv2(tiny_config(max_query_len=24, pad_to_max_query_len=False)).eval()
    predictor = make_predictor(model, batch_size=batch_size)
    names = [f"object number {i}" for i in range(12)]
    images = [random_image(4), random_image(5)]
    vocabulary = predictor.detection_vocabulary(names)
    assert len(vocabulary.chunks) == 3
    calls = []
    hook = model.core.backbone.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
    try:
        together = predictor.predict(images, [vocabulary] * 2, threshold=0.0)
    finally:
        hook.remove()
    assert calls == [1, 1] if batch_size == 1 else sum(calls) == 2
    for image, found in zip(images, together):
        alone = make_predictor(model).predict([image], [vocabulary], threshold=0.0)[0]
        assert_same_detections_up_to_ties(found, alone)


def test_batches_group_images_of_one_size_and_keep_the_input_order(
    make_predictor: Callable[..., Predictor], random_image: Callable[..., Image.Image]
) -> None:
    """Sizes A, B, A, B with batch 2: the two A images batch together (and so do the B ones), so each
    result is the one its image gets alone — a mixed batch would pad A to B's size and change the
    fusion's input — and the results come back in the input order."""
    predictor = make_predictor(batch_size=2)
    images = [
        random_image(1, (80, 60)),
        random_image(2, (60, 80)),
        random_image(3, (80, 60)),
        random_image(4, (60, 80)),
    ]
    vocabulary = predictor.detection_vocabulary(["red circle", "blue square"])
    batched = predictor.predict(images, [vocabulary] * 4, threshold=0.0)
    for image, found in zip(images, batched):
        assert found.image_size == (image.height, image.width)
        alone = make_predictor().predict([image], [vocabulary], threshold=0.0)[0]
        assert_same_detections_up_to_ties(found, alone)


def test_lvis_vocabulary_runs_and_its_text_is_encoded_once(
    make_predictor: Callable[..., Predictor], random_image: Callable[..., Image.Image]
) -> None:
    names = LVIS_NAMES.read_text().splitlines()
    predictor = make_predictor()
    first = predictor.detect(random_image(5, (64, 64)), names, threshold=0.0)
    chunks = len(predictor.detection_vocabulary(names).chunks)
    assert chunks > 4 and len(predictor.text_cache) == chunks
    assert predictor.text_cache.misses == chunks and predictor.text_cache.hits == 0
    assert first.names == names and int(first.labels.max()) < 1203
    second = predictor.detect(random_image(6, (64, 64)), names, threshold=0.0)
    assert predictor.text_cache.misses == chunks and predictor.text_cache.hits == chunks
    assert len(second) > 0
    predictor.clear_text_cache()
    assert len(predictor.text_cache) == 0


def test_official_chunk_size(
    make_predictor: Callable[..., Predictor], random_image: Callable[..., Image.Image]
) -> None:
    names = LVIS_NAMES.read_text().splitlines()[:100]
    predictor = make_predictor()
    assert [c.prompt.num_labels for c in predictor.detection_vocabulary(names, chunk_size=40).chunks] == [
        40,
        40,
        20,
    ]
    dets = predictor.detect(random_image(7), names, threshold=0.0, chunk_size=40)
    assert set(dets.labels.tolist()) <= set(range(100))


# --- bad input -----------------------------------------------------------------------------------
def test_bad_calls_are_clear_errors(
    make_predictor: Callable[..., Predictor], random_image: Callable[..., Image.Image], tmp_path: Path
) -> None:
    predictor = make_predictor()
    image = random_image(0)
    with pytest.raises(ValueError, match="threshold"):
        predictor.detect(image, ["cat"], threshold=1.5)
    with pytest.raises(ValueError, match="class list is empty"):
        predictor.detect(image, [])
    with pytest.raises(ValueError, match="2 class lists for 1 images"):
        predictor.detect([image], [["cat"], ["dog"]])
    with pytest.raises(ValueError, match="does not occur"):
        predictor.ground(image, "a cat", phrases=["dog"])
    with pytest.raises(ValueError, match="no such image"):
        predictor.detect(tmp_path / "missing.jpg", ["cat"])
    with pytest.raises(ValueError, match="batch_size"):
        Predictor(predictor.model, batch_size=0)


# --- exports --------------------------------------------------------------------------------------
def example_detections() -> Detections:
    return Detections(
        boxes=torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.0, 5.0]]),
        scores=torch.tensor([0.9, 0.4]),
        labels=torch.tensor([1, 0]),
        names=["cat", "dog"],
        image_size=(100, 200),
        prompt="cat. dog",
    )


def test_to_coco_uses_the_official_box_size() -> None:
    dets = example_detections()
    entries = dets.to_coco(image_id=7, category_ids={0: 18, 1: 17})
    assert entries[0] == {
        "image_id": 7,
        "category_id": 17,
        "bbox": [10.0, 20.0, 21.0, 41.0],
        "score": pytest.approx(0.9),
    }
    assert dets.to_coco(7, legacy_box_size=False)[1]["bbox"] == [0.0, 0.0, 5.0, 5.0]
    assert dets.to_coco(7)[1]["category_id"] == 1  # default: label + 1
    assert dets.label_names == ["dog", "cat"]
    assert dets.to_dict()[0] == {
        "box_xyxy": [10.0, 20.0, 30.0, 60.0],
        "score": pytest.approx(0.9),
        "label": "dog",
        "label_index": 1,
    }


def test_to_supervision(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import supervision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="glipv2\\[supervision\\]"):
            example_detections().to_supervision()
        captured: dict[str, Any] = {}
        fake = types.ModuleType("supervision")
        fake.Detections = lambda **kwargs: captured.update(kwargs) or "sv"  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "supervision", fake)
        assert example_detections().to_supervision() == "sv"
        assert captured["xyxy"].tolist() == [[10, 20, 30, 60], [0, 0, 5, 5]]
        assert captured["class_id"].tolist() == [1, 0]
        assert captured["data"]["class_name"].tolist() == ["dog", "cat"]
    else:
        sv = example_detections().to_supervision()
        assert sv.xyxy.shape == (2, 4) and sv.class_id.tolist() == [1, 0]
        assert sv.data["class_name"].tolist() == ["dog", "cat"]


def test_postprocessor_follows_the_config(tiny_model: GLIPv2) -> None:
    model_config = tiny_model.config.replace(detections_per_image=300, nms_threshold=0.5)
    post = PostProcessor.from_config(model_config)
    assert (post.detections_per_image, post.nms_threshold, post.pre_nms_top_n) == (300, 0.5, 1000)
    processor = GLIPv2Processor.from_config(model_config)
    assert (processor.min_size, processor.max_size) == (800, 1333)
    # the processor's default post-processing follows the config too
    default = processor.postprocessor
    assert (default.detections_per_image, default.nms_threshold, default.pre_nms_top_n) == (300, 0.5, 1000)


def test_drawing_survives_boxes_narrower_than_a_pixel() -> None:
    from glipv2.inference.visualize import draw_detections

    dets = Detections(
        torch.tensor([[10.0, 5.0, 9.5, 4.6]]), torch.tensor([0.5]), torch.tensor([0]), ["cat"], (20, 30)
    )
    assert draw_detections(Image.new("RGB", (30, 20)), dets).size == (30, 20)


# --- masks -------------------------------------------------------------------------------------------
def test_a_mask_head_gives_each_detection_a_mask_of_its_own_label(
    tiny_config: Callable[..., Any], random_image: Callable[..., Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = GLIPv2(
        tiny_config(pad_to_max_query_len=False, mask_head=True, mask_head_channels=8, mask_head_convs=1)
    )
    predictor = Predictor(
        model, postprocessor=PostProcessor(inference_threshold=0.0, detections_per_image=20)
    )
    asked: list[list[torch.Tensor]] = []
    real = model.predict_mask_logits

    def spy(output: Any, boxes: list[torch.Tensor], token_weights: list[torch.Tensor]) -> list[torch.Tensor]:
        asked.append(token_weights)
        return real(output, boxes, token_weights)

    monkeypatch.setattr(model, "predict_mask_logits", spy)
    image = random_image(3, (90, 70))
    names = ["red circle", "blue square", "star"]
    dets = predictor.detect(image, names, threshold=0.0)
    assert len(dets) > 0 and dets.masks is not None
    assert dets.masks.dtype == torch.bool and dets.masks.shape == (len(dets), 70, 90)
    # every mask lies inside its box (Mask R-CNN's paste pads the box by a pixel or two)
    for mask, (x1, y1, x2, y2) in zip(dets.masks, dets.boxes.tolist()):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs):
            assert xs.min() >= x1 - 3 and xs.max() <= x2 + 3 and ys.min() >= y1 - 3 and ys.max() <= y2 + 3
    # each detection's mask was asked for with the tokens of its label
    (weights,) = asked[0]
    encoded = predictor.encode(DETECTION_SEPARATOR.join(names))
    positive = predictor.processor.chunk_classes(names)[0].prompt.positive_map(
        encoded.offsets, encoded.attention_mask
    )
    rows = [tuple(torch.nonzero(row).flatten().tolist()) for row in positive]
    asked_labels = [rows.index(tuple(torch.nonzero(w).flatten().tolist())) for w in weights]
    assert sorted(asked_labels) == sorted(dets.labels.tolist())  # threshold 0: every detection is kept
    # exports carry the masks: COCO RLE that decodes back to them
    from pycocotools import mask as mask_utils

    entry = dets.to_coco(7)[0]
    decoded = mask_utils.decode(
        {"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"].encode()}
    )
    assert torch.equal(torch.from_numpy(decoded).bool(), dets.masks[0])
    assert dets.to_dict()[0]["mask_rle"] == entry["segmentation"]
    assert dets[0].masks is not None and dets[0].masks.shape == (1, 70, 90)


def test_without_a_mask_head_there_are_no_masks(
    make_predictor: Callable[..., Predictor], random_image: Callable[..., Image.Image]
) -> None:
    dets = make_predictor().detect(random_image(4), ["cat", "dog"], threshold=0.0)
    assert (
        dets.masks is None
        and "segmentation" not in dets.to_coco(1)[0]
        and "mask_rle" not in dets.to_dict()[0]
    )


def test_drawing_tints_the_masks() -> None:
    from glipv2.inference.visualize import draw_detections, label_colour

    masks = torch.zeros(1, 40, 60, dtype=torch.bool)
    masks[0, 26:32, 30:40] = True
    # the name tag sits above the box, clear of the mask
    dets = Detections(
        torch.tensor([[2.0, 20.0, 57.0, 37.0]]),
        torch.tensor([0.9]),
        torch.tensor([0]),
        ["cat"],
        (40, 60),
        masks=masks,
    )
    drawn = draw_detections(Image.new("RGB", (60, 40)), dets, mask_opacity=1.0)
    assert drawn.getpixel((35, 29)) == label_colour(0)  # inside the mask
    assert drawn.getpixel((10, 34)) == (0, 0, 0)  # inside the box, outside the mask
    with pytest.raises(ValueError, match="masks of"):
        draw_detections(Image.new("RGB", (61, 40)), dets)
