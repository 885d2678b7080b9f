"""The web demo's modes without a browser: what each returns on the shipped weights, the sentence a
bad input gets, and one model shared by concurrent requests."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glipv2 import GLIPv2, Predictor
from glipv2.serve.service import DemoService, ServeInputError, split_names
from glipv2.utils.shipped import DEFAULT_SHIPPED_MODEL, SHIPPED_WEIGHTS_DIR

pytest.importorskip("gradio")
from glipv2.serve.app import Downloads, _respond, build_app, shapes_examples


@pytest.fixture(scope="module")
def service() -> DemoService:
    model = GLIPv2.from_pretrained(SHIPPED_WEIGHTS_DIR / DEFAULT_SHIPPED_MODEL)
    return DemoService(Predictor(model), DEFAULT_SHIPPED_MODEL, 0.3)


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> list:
    return shapes_examples(tmp_path_factory.mktemp("examples"), count=3, seed=7)


def test_split_names() -> None:
    assert split_names(" red circle, ,blue square\ngreen star ") == [
        "red circle",
        "blue square",
        "green star",
    ]
    assert split_names(" , ") == []


def test_examples_carry_prompts_of_their_own_image(examples: list) -> None:
    grounding = json.loads((Path(examples[0].image).parents[1] / "grounding.json").read_text())
    assert [Path(e.image).name for e in examples] == [i["file_name"] for i in grounding["images"]]
    assert examples[0].caption == grounding["images"][0]["caption"]
    assert all(e.classes and e.question.endswith("?") and e.expression for e in examples)


def test_detection_matches_the_predictor(service: DemoService, examples: list) -> None:
    example = examples[2]
    result = service.detect(example.image, example.classes, 0.3, one_label_per_box=False)
    direct = service.predictor.detect(example.image, split_names(example.classes), threshold=0.3)
    assert [r[0] for r in result.rows] == direct.label_names
    # detection mode draws and reports boxes; the masks belong to the segmentation mode
    assert result.document["detections"] == [
        {k: v for k, v in d.items() if k != "mask_rle"} for d in direct.to_dict()
    ]
    assert result.message.startswith(f"**Detection: {len(direct)} found**")
    # boxes drawn: the annotated image differs from the upload
    upload = np.asarray(Image.open(example.image).convert("RGB"))
    assert len(direct) > 0 and (np.asarray(result.image) != upload).any()


def test_one_label_per_box_never_changes_the_shared_predictor(service: DemoService, examples: list) -> None:
    before = service.predictor.postprocessor.one_label_per_box
    service.detect(examples[1].image, examples[1].classes, 0.1, one_label_per_box=True)
    assert service.predictor.postprocessor.one_label_per_box == before


def test_every_mode_answers(service: DemoService, examples: list) -> None:
    example = examples[1]
    grounded = service.ground(example.image, example.caption, example.phrases, 0.2)
    assert grounded.document["task"] == "grounding" and grounded.image is not None
    assert grounded.document["labels"] == split_names(example.phrases)  # the image's own phrases
    instance = service.segment(example.image, "instance", example.classes, 0.2)
    assert all("mask_rle" in d for d in instance.document["detections"])
    referring = service.segment(example.image, "referring", example.expression, 0.0)
    assert len(referring.document["detections"]) == 1  # the referent: one region
    answered = service.answer(example.image, example.question, top_k=3)
    expected = service.predictor.answer(example.image, example.question, top_k=3)
    assert [r[0] for r in answered.rows] == [a for a, _ in expected]
    assert answered.message.startswith(f"**Answer: {expected[0][0]}**")
    described = service.describe(example.image, beam_size=2, max_length=12)
    assert described.document["generated_caption"] == service.predictor.caption(
        example.image, beam_size=2, max_length=12
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, img: s.detect(None, "red circle", 0.3), "Upload an image"),
        (lambda s, img: s.detect(img, " , ", 0.3), "class names"),
        (lambda s, img: s.detect(img, "red circle", 1.5), "threshold must lie in [0, 1]"),
        (lambda s, img: s.ground(img, "  ", "", 0.3), "sentence"),
        (lambda s, img: s.ground(img, "a red circle", "blue star", 0.3), "blue star"),
        (lambda s, img: s.segment(img, "referring", "", 0.3), "referring expression"),
        (lambda s, img: s.answer(img, "", 3), "question"),
        (lambda s, img: s.describe(img, 0, 10), "at least 1"),
    ],
)
def test_bad_requests_get_a_sentence(service: DemoService, examples: list, call, message: str) -> None:
    with pytest.raises(ServeInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call(service, examples[0].image)


def test_unreadable_upload_names_the_file_not_the_temp_path(service: DemoService, tmp_path: Path) -> None:
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ServeInputError, match="^holiday.png: cannot read the image") as info:
        service.detect(str(bad), "red circle", 0.3)
    assert str(tmp_path) not in str(info.value)


def test_a_model_without_the_head_says_so(tiny_model: GLIPv2, examples: list) -> None:
    service = DemoService(Predictor(tiny_model), "tiny", 0.3)
    for call in (
        lambda: service.answer(examples[0].image, "is there a circle?"),
        lambda: service.describe(examples[0].image),
        lambda: service.segment(examples[0].image, "instance", "red circle", 0.3),
    ):
        with pytest.raises(ServeInputError, match="tiny has no"):
            call()


def test_the_page_shows_errors_as_sentences_never_tracebacks(service: DemoService, examples: list) -> None:
    downloads = Downloads()
    image, message, _, file = _respond("vqa", service.answer, (None, "what?", 3), downloads)
    assert (
        image is None and file is None and message == "⚠️ Upload an image or pick one of the examples first."
    )

    def broken(*_: object) -> None:
        raise RuntimeError("out of memory\n  File 'x.py', line 3")

    image, message, _, file = _respond("detection", broken, (), downloads)
    assert message == "⚠️ The model failed on this input (RuntimeError: out of memory)."
    _, _, _, file = _respond(
        "detection", service.detect, (examples[0].image, examples[0].classes, 0.3), downloads
    )
    assert json.loads(Path(file).read_text())["task"] == "detection"
    assert Path(file).parent.parent == downloads.folder  # the server's own folder, one per request


def test_concurrent_requests_share_one_model_and_agree(service: DemoService, examples: list) -> None:
    jobs = [(e.image, e.classes) for e in examples] * 2
    sequential = [service.detect(i, c, 0.2).document for i, c in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda job: service.detect(job[0], job[1], 0.2).document, jobs))
    assert concurrent == sequential


def test_build_app_wires_every_mode(service: DemoService, examples: list) -> None:
    app = build_app(service, examples)
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {f"run-{m}" for m in ("detection", "grounding", "segmentation", "vqa", "captioning")} <= ids
    assert len(app.fns) >= 5
