"""The Gradio page of `glipv2 serve`: one image, one tab per mode, one result area.

Every handler goes through `_respond`, which turns a `ServeInputError` into a sentence in the page
and any other failure into a one-line message (the traceback goes to the server's log only), so
the browser never shows a stack trace.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ..utils.io import atomic_write_json, read_json
from .service import TABLE_HEADERS, DemoService, ModeResult, ServeInputError

LOG = logging.getLogger("glipv2.serve")
ANSWER_HEADERS = ["answer", "score"]
# Gradio's default theme asks Google for its fonts; a demo on a closed network must not wait for them
THEME_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]


@dataclass
class Example:
    """One example image with prompts that fit it (from its ShapesWorld annotations)."""

    image: str
    classes: str
    caption: str
    phrases: str
    expression: str
    question: str


def shapes_examples(folder: Path, count: int = 3, seed: int = 7) -> list[Example]:
    """`count` ShapesWorld val images written to `folder`, each with its own class names, caption,
    a referring expression and a question (what the shipped weights were trained to read)."""
    from ..data.shapes_world import generate_shapes_world

    if not (folder / "grounding.json").is_file():
        generate_shapes_world(folder, count, seed, split="val", progress=False)
    grounding = read_json(folder / "grounding.json", "ShapesWorld grounding")
    names = {c["id"]: c["name"] for c in grounding["categories"]}
    questions = read_json(folder / "vqa_questions.json", "VQA questions")["questions"]
    examples = []
    for entry in grounding["images"]:
        present = [names[a["category_id"]] for a in grounding["annotations"] if a["image_id"] == entry["id"]]
        asked = [q["question"] for q in questions if q["image_id"] == entry["id"]]
        expressions = [r["expression"] for r in entry.get("refexps", [])]
        examples.append(
            Example(
                str(folder / "images" / entry["file_name"]),
                ", ".join(dict.fromkeys(present)),
                entry["caption"],
                ", ".join(dict.fromkeys(p["text"] for p in entry["phrases"])),
                expressions[0] if expressions else entry["phrases"][0]["text"],
                asked[0] if asked else "what colour is the circle?",
            )
        )
    return examples


def upload_image(**kwargs: Any) -> gr.Image:
    """A `gr.Image` that hands the handler the uploaded file as it came (its path), undecoded.

    Gradio's own pre-processing decodes the upload before the handler runs, so a file that is not
    an image would fail inside Gradio with its generic error; here `DemoService.read_image` decodes
    it (EXIF orientation, 16-bit and palette images as everywhere in glipv2) and a bad file gets a
    sentence in the page. (Set on the instance: a subclass of a Gradio component makes Gradio write
    a `.pyi` file beside its module at import time.)"""
    image = gr.Image(type="filepath", **kwargs)
    decode = image.preprocess

    def keep_file(payload: Any) -> Any:
        if (
            payload is not None
            and getattr(payload, "path", None)
            and not str(payload.url or "").startswith("data:")
        ):
            return payload.path
        return decode(payload)  # a pasted image arrives as a data: URL

    image.preprocess = keep_file  # type: ignore[method-assign]
    return image


class Downloads:
    """The JSON download of each request, in a folder of the server's own (never the user's)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="glipv2-serve-"))

    def write(self, document: dict[str, Any]) -> str:
        path = (
            self.folder / uuid.uuid4().hex / f"glipv2_{document.get('task', 'result').replace(' ', '_')}.json"
        )
        path.parent.mkdir()
        atomic_write_json(path, document, indent=1, end="\n")
        return str(path)


def build_app(service: DemoService, examples: list[Example]) -> gr.Blocks:
    """The page: the image (upload or an example) on the left, the result on the right, the modes
    as tabs below, each with its prompt, settings and a Run button."""
    downloads = Downloads()
    first = examples[0] if examples else Example("", "", "", "", "", "")

    def threshold_slider() -> gr.Slider:
        return gr.Slider(0.0, 1.0, value=service.default_threshold, step=0.01, label="Score threshold")

    with gr.Blocks(title="glipv2 demo", analytics_enabled=False) as app:
        gr.Markdown(
            f"## glipv2 — one model, six tasks\nModel: `{service.model_name}`. Upload an image or pick an "
            "example, choose a mode and press its button."
        )
        with gr.Row():
            with gr.Column():
                image = upload_image(label="Image", sources=["upload", "clipboard"], elem_id="image-in")
                with gr.Tabs():
                    with gr.Tab("Detection", id="detection"):
                        classes = gr.Textbox(
                            label="Class names (comma-separated)", value=first.classes, elem_id="classes"
                        )
                        det_threshold = threshold_slider()
                        one_label = gr.Checkbox(
                            label="One label per box (names that share words, e.g. 'red circle' and 'red square')",
                            value=True,
                        )
                        det_run = gr.Button("Run detection", variant="primary", elem_id="run-detection")
                    with gr.Tab("Grounding", id="grounding"):
                        caption = gr.Textbox(label="Sentence", value=first.caption, elem_id="caption")
                        phrases = gr.Textbox(
                            label="Phrases to ground (comma-separated; empty: the sentence's pieces)",
                            value=first.phrases,
                            elem_id="phrases",
                        )
                        ground_threshold = threshold_slider()
                        ground_run = gr.Button("Run grounding", variant="primary", elem_id="run-grounding")
                    with gr.Tab("Segmentation", id="segmentation"):
                        kind = gr.Radio(
                            [
                                ("instance (class names)", "instance"),
                                ("referring (an expression)", "referring"),
                            ],
                            value="instance",
                            label="Kind",
                        )
                        seg_prompt = gr.Textbox(
                            label="Class names, or a referring expression",
                            value=first.classes,
                            elem_id="seg-prompt",
                        )
                        seg_threshold = threshold_slider()
                        seg_run = gr.Button("Run segmentation", variant="primary", elem_id="run-segmentation")
                    with gr.Tab("VQA", id="vqa"):
                        question = gr.Textbox(label="Question", value=first.question, elem_id="question")
                        top_k = gr.Slider(1, 10, value=5, step=1, label="Answers shown")
                        vqa_run = gr.Button("Answer", variant="primary", elem_id="run-vqa")
                    with gr.Tab("Captioning", id="captioning"):
                        beam_size = gr.Slider(1, 5, value=3, step=1, label="Beam size (1: greedy)")
                        max_length = gr.Slider(5, 40, value=30, step=1, label="Maximum tokens")
                        cap_run = gr.Button("Describe", variant="primary", elem_id="run-captioning")
            with gr.Column():
                result_image = gr.Image(
                    type="pil", label="Result", interactive=False, elem_id="image-out", format="png"
                )
                message = gr.Markdown(elem_id="message")
                table = gr.Dataframe(
                    headers=TABLE_HEADERS, label="Detections", interactive=False, elem_id="table"
                )
                download = gr.File(label="JSON", interactive=False, elem_id="download")
        if examples:
            gr.Examples(
                [[e.image, e.classes, e.caption, e.phrases, e.question] for e in examples],
                inputs=[image, classes, caption, phrases, question],
                label="Examples (ShapesWorld images, with prompts that fit them)",
            )

        outputs = [result_image, message, table, download]

        def respond(mode: str, run: Callable[..., ModeResult]) -> Callable[..., tuple[Any, ...]]:
            def handler(*args: Any) -> tuple[Any, ...]:
                return _respond(mode, run, args, downloads)

            return handler

        det_run.click(
            respond("detection", service.detect), [image, classes, det_threshold, one_label], outputs
        )
        ground_run.click(
            respond("grounding", service.ground), [image, caption, phrases, ground_threshold], outputs
        )
        seg_run.click(
            respond("segmentation", service.segment), [image, kind, seg_prompt, seg_threshold], outputs
        )
        vqa_run.click(respond("vqa", service.answer), [image, question, top_k], outputs)
        cap_run.click(respond("captioning", service.describe), [image, beam_size, max_length], outputs)
        # switching the segmentation kind suggests a prompt of that kind for an example image (found
        # by file name: Gradio hands the handler its own copy of an example)
        by_name = {Path(e.image).name: e for e in examples}

        def suggest(kind_value: str, image_value: str | None, current: str) -> str:
            example = by_name.get(Path(image_value).name) if image_value else None
            if example is None:
                return current
            return example.expression if kind_value == "referring" else example.classes

        kind.change(suggest, [kind, image, seg_prompt], seg_prompt)
    return app


def _respond(
    mode: str, run: Callable[..., ModeResult], args: tuple[Any, ...], downloads: Downloads
) -> tuple[Any, ...]:
    """(annotated image, message, table, JSON file) for the page; never raises."""
    try:
        result = run(*args)
    except ServeInputError as err:
        return None, f"⚠️ {err}", _table(mode, []), None
    # the page gets one line; the server's log keeps the traceback for whoever runs it
    except Exception as err:
        LOG.exception("glipv2 serve: %s failed", mode)
        return (
            None,
            f"⚠️ The model failed on this input ({type(err).__name__}: {_first_line(err)}).",
            _table(mode, []),
            None,
        )
    return result.image, result.message, _table(mode, result.rows), downloads.write(result.document)


def _table(mode: str, rows: list[list[Any]]) -> Any:
    if mode == "vqa":
        return gr.Dataframe(value=rows or None, headers=ANSWER_HEADERS, label="Answers")
    if mode == "captioning":
        return gr.Dataframe(value=None, headers=TABLE_HEADERS, label="Detections")
    return gr.Dataframe(value=rows or None, headers=TABLE_HEADERS, label="Detections")


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [""])[0][:200]


def theme() -> gr.themes.Base:
    return gr.themes.Default(font=THEME_FONTS, font_mono=["ui-monospace", "monospace"])
