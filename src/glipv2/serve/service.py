"""What the web demo computes, without the web: one `Predictor` shared by every request, and one
method per demo mode returning the annotated image, a table, the JSON document and a message.

Kept apart from `app.py` (the Gradio page) so that every mode, and every bad input, is tested
without a browser or a server; the page only lays these results out.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from ..inference.detections import Detections
from ..inference.predictor import Predictor
from ..inference.visualize import draw_detections, draw_text_banner
from ..processing.processor import load_image

# the largest upload we decode: a bigger one is refused with a message (a 100-megapixel PNG would
# take minutes on a CPU and gigabytes of memory, for a demo)
MAX_PIXELS = 40_000_000
# rows of the detections table (the JSON download has all of them)
MAX_TABLE_ROWS = 50
TABLE_HEADERS = ["label", "score", "x1", "y1", "x2", "y2"]
MODES = ("detection", "grounding", "segmentation", "vqa", "captioning")


class ServeInputError(ValueError):
    """A problem with what the user gave (no image, an unreadable file, an empty prompt, a mode the
    model has no head for), shown in the page as one sentence."""


@dataclass
class ModeResult:
    """One request's answer. image: the annotated RGB image (None when the request failed); rows:
    the table (detections, or ranked answers); document: the JSON download; message: one line of
    Markdown for the page (what was found, or what was wrong)."""

    image: Image.Image | None = None
    rows: list[list[Any]] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    ok: bool = True


def split_names(text: str) -> list[str]:
    """Class names typed as "a, b, c" (commas or newlines; blank entries dropped)."""
    return [n.strip() for n in text.replace("\n", ",").split(",") if n.strip()]


class DemoService:
    """The demo's model and modes. Thread-safe: the `Predictor` is shared by Gradio's workers (its
    caches lock), and every call passes its settings as arguments."""

    def __init__(self, predictor: Predictor, model_name: str, default_threshold: float) -> None:
        self.predictor = predictor
        self.model_name = model_name
        self.default_threshold = default_threshold
        heads = predictor.model.heads
        self.has_masks = "mask" in heads
        self.has_vqa = "vqa" in heads
        self.has_caption = "caption" in heads
        # two requests at once on a small CPU would each run at half speed; torch itself is
        # thread-safe for inference, so this lock only orders them (first come, first served)
        self._lock = threading.Lock()

    # --- inputs ---------------------------------------------------------------------------------
    def read_image(self, upload: str | os.PathLike[str] | Image.Image | None) -> Image.Image:
        if upload is None or (isinstance(upload, str) and not upload.strip()):
            raise ServeInputError("Upload an image or pick one of the examples first.")
        try:
            image = load_image(upload)
        except ValueError as err:
            if isinstance(upload, Image.Image):
                raise ServeInputError(f"Cannot read the image: {_reason(err)}") from None
            # the upload's temporary path means nothing to the user: name the file only
            name = os.path.basename(str(upload))
            reason = _reason(err).replace(str(upload), name)
            raise ServeInputError(f"{name}: {reason}") from None
        if image.width * image.height > MAX_PIXELS:
            raise ServeInputError(
                f"The image is {image.width}×{image.height}; the demo takes up to {MAX_PIXELS // 1_000_000} "
                "megapixels."
            )
        return image

    @staticmethod
    def check_threshold(threshold: float | None) -> float:
        if threshold is None or not 0.0 <= float(threshold) <= 1.0:
            raise ServeInputError(f"The threshold must lie in [0, 1], got {threshold}.")
        return float(threshold)

    # --- modes ----------------------------------------------------------------------------------
    def detect(
        self, upload: Any, classes: str, threshold: float, one_label_per_box: bool = False
    ) -> ModeResult:
        """Open-vocabulary detection of the comma-separated `classes` (boxes only)."""
        image = self.read_image(upload)
        names = split_names(classes or "")
        if not names:
            raise ServeInputError('Type the class names to find, separated by commas ("cat, dog").')
        detections = self._detect(image, names, self.check_threshold(threshold), one_label_per_box)
        return self._detections_result("detection", image, replace(detections, masks=None))

    def ground(self, upload: Any, caption: str, phrases: str, threshold: float) -> ModeResult:
        """Phrase grounding: the phrases of `caption` (given, comma-separated, or its pieces)."""
        image = self.read_image(upload)
        if not (caption or "").strip():
            raise ServeInputError("Type a sentence whose phrases to find.")
        phrase_list = split_names(phrases or "") or None
        try:
            vocabulary = self.predictor.grounding_vocabulary(caption.strip(), phrase_list)
        except ValueError as err:
            raise ServeInputError(_reason(err)) from None
        with self._lock:
            detections = self.predictor.predict([image], [vocabulary], self.check_threshold(threshold))[0]
        return self._detections_result("grounding", image, replace(detections, masks=None))

    def segment(self, upload: Any, kind: str, prompt: str, threshold: float) -> ModeResult:
        """Instance segmentation (`kind` "instance": class names) or referring segmentation
        ("referring": one expression; its best match is the referent)."""
        if not self.has_masks:
            raise ServeInputError(f"{self.model_name} has no mask head: segmentation needs one.")
        image = self.read_image(upload)
        threshold = self.check_threshold(threshold)
        if kind == "referring":
            expression = (prompt or "").strip()
            if not expression:
                raise ServeInputError('Type a referring expression ("the big red circle").')
            try:
                vocabulary = self.predictor.grounding_vocabulary(expression, [expression])
            except ValueError as err:
                raise ServeInputError(_reason(err)) from None
            with self._lock:
                detections = self.predictor.predict([image], [vocabulary], 0.0)[0]
            # the expression names one object: its best-scoring region, if it clears the threshold
            detections = detections[:1].above(threshold)
            return self._detections_result("referring segmentation", image, detections)
        names = split_names(prompt or "")
        if not names:
            raise ServeInputError('Type the class names to segment, separated by commas ("cat, dog").')
        detections = self._detect(image, names, threshold, one_label_per_box=True)
        return self._detections_result("instance segmentation", image, detections)

    def answer(self, upload: Any, question: str, top_k: int = 5) -> ModeResult:
        """VQA: the `top_k` answers of the model's vocabulary, best first."""
        if not self.has_vqa:
            raise ServeInputError(f"{self.model_name} has no VQA head (no answer vocabulary).")
        image = self.read_image(upload)
        if not (question or "").strip():
            raise ServeInputError("Type a question about the image.")
        with self._lock:
            ranked = self.predictor.answer(image, question.strip(), top_k=int(top_k))
        best, score = ranked[0]  # type: ignore[misc]
        rows = [[a, round(s, 4)] for a, s in ranked]  # type: ignore[misc]
        document = {
            "task": "vqa",
            "question": question.strip(),
            "answers": [{"answer": a, "score": round(s, 4)} for a, s in ranked],  # type: ignore[misc]
        }
        banner = draw_text_banner(image, [f"Q: {question.strip()}", f"A: {best} ({score:.2f})"])
        return ModeResult(banner, rows, document, f"**Answer: {best}** (score {score:.2f})")

    def describe(self, upload: Any, beam_size: int = 3, max_length: int = 30) -> ModeResult:
        """Captioning: beam search (`beam_size` 1 is greedy)."""
        if not self.has_caption:
            raise ServeInputError(f"{self.model_name} has no caption head.")
        image = self.read_image(upload)
        if int(beam_size) < 1 or int(max_length) < 1:
            raise ServeInputError("Beam size and maximum length must be at least 1.")
        with self._lock:
            caption = self.predictor.caption(image, beam_size=int(beam_size), max_length=int(max_length))
        document = {"task": "caption", "beam_size": int(beam_size), "generated_caption": caption}
        return ModeResult(draw_text_banner(image, [str(caption)]), [], document, f"**Caption: {caption}**")

    # --- helpers --------------------------------------------------------------------------------
    def _detect(
        self, image: Image.Image, names: list[str], threshold: float, one_label_per_box: bool
    ) -> Detections:
        try:
            vocabulary = self.predictor.detection_vocabulary(names)
        except ValueError as err:
            raise ServeInputError(_reason(err)) from None
        postprocessor = None
        if one_label_per_box:
            # a copy: the shared predictor's own post-processing is never changed by a request
            postprocessor = copy.copy(self.predictor.postprocessor)
            postprocessor.one_label_per_box = True
        with self._lock:
            return self.predictor.predict([image], [vocabulary], threshold, postprocessor)[0]

    def _detections_result(self, task: str, image: Image.Image, detections: Detections) -> ModeResult:
        rows = [
            [name, round(score, 3), *(round(v, 1) for v in box)]
            for name, score, box in zip(
                detections.label_names, detections.scores.tolist(), detections.boxes.tolist()
            )
        ][:MAX_TABLE_ROWS]
        document = {
            "task": task,
            "prompt": detections.prompt,
            "width": image.width,
            "height": image.height,
            "labels": detections.names,
            "detections": detections.to_dict(),
        }
        found = len(detections)
        if found:
            counts = Counter(detections.label_names)
            listed = ", ".join(f"{n} × {c}" if c > 1 else n for n, c in counts.items())
            message = f"**{task.capitalize()}: {found} found** — {listed}"
        else:
            message = f"**{task.capitalize()}: nothing above the threshold** — try a lower one."
        return ModeResult(draw_detections(image, detections), rows, document, message)


def _reason(err: BaseException) -> str:
    """An error's first line, without a leading temporary upload path (the user never saw it)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    head, sep, rest = text.partition(": ")
    return rest if sep and (os.sep in head or head.endswith((".png", ".jpg", ".jpeg", ".webp"))) else text
