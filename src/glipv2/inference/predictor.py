"""`Predictor`: images + class names or a caption -> `Detections`, as the official GLIP computes them.

With a model that has a mask head, every detection also gets an instance mask, asked for with the
tokens of its label (instance segmentation for class names, referring segmentation for phrases).

Every image may carry its own prompt. A vocabulary longer than the model's 256 token slots is
split into chunks, one forward pass each, merged with global label ids and no cross-chunk NMS
(official `TEST.CHUNKED_EVALUATION`); the text encoder's output P̊ of each prompt is cached, so a
folder of images or a dataset encodes each chunk once.

A `Predictor` may be shared by threads (a web server's workers): its caches take a lock, and a
call's post-processing settings are arguments, never swapped into shared state.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..modeling.glipv2 import GLIPv2
from ..modeling.text_encoder import TextFeatures
from ..processing.postprocess import PostProcessor, RawDetections, fit_token_slots
from ..processing.processor import GLIPv2Processor, ImageInput, is_single_image, load_image, paste_masks
from ..processing.prompts import DETECTION_SEPARATOR, Prompt, PromptChunk, Span, grounding_prompt
from .detections import Detections


@dataclass
class EncodedText:
    """P̊ of one prompt, (1, T, D), with its tokenization's offsets (T, 2) and mask (T,)."""

    features: TextFeatures
    offsets: torch.Tensor
    attention_mask: torch.Tensor


class TextFeatureCache:
    """Least-recently-used cache of encoded prompts, keyed by prompt text; safe to share between
    threads (every read also reorders the entries, so reads take the lock too)."""

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, EncodedText] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> EncodedText | None:
        with self._lock:
            entry = self._entries.get(text)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(text)
            return entry

    def put(self, text: str, entry: EncodedText) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[text] = entry
            self._entries.move_to_end(text)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@dataclass
class Vocabulary:
    """What one image is asked about: the label names, the passes (chunks) that cover them, and
    the prompt as one text (for reports)."""

    names: list[str]
    chunks: list[PromptChunk]
    text: str


# batches' worth of images read ahead and grouped by size when batch_size > 1
BUCKET_WINDOW = 8


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _same_image_batches(images: list[Any], size: int) -> Iterator[list[int]]:
    """Indices of consecutive entries that are the same image (object, or equal path), `size` at most."""
    group: list[int] = []
    for i, image in enumerate(images):
        same = group and (
            images[group[0]] is image or (isinstance(image, (str, Path)) and images[group[0]] == image)
        )
        if group and (not same or len(group) == size):
            yield group
            group = []
        group.append(i)
    if group:
        yield group


class Predictor:
    """Open-vocabulary detection and phrase grounding with a GLIP/GLIPv2 model.

    >>> predictor = Predictor(GLIPv2.from_pretrained("my_model"))
    >>> dets = predictor.detect("street.jpg", ["person", "bicycle", "car"])  # the model's threshold
    >>> dets.boxes, dets.scores, dets.label_names
    >>> dets.save("street_detections.png")  # or dets.plot(): the annotated PIL image
    """

    def __init__(
        self,
        model: GLIPv2,
        processor: GLIPv2Processor | None = None,
        *,
        postprocessor: PostProcessor | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 1,
        text_cache_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval() if device is None else model.to(device).eval()
        self.device = next(model.parameters()).device
        self.processor = processor or GLIPv2Processor.for_model(model)
        # the default post-processing of every call (a call may pass its own, see `predict`)
        self.postprocessor = postprocessor or self.processor.postprocessor
        self.batch_size = batch_size
        self.text_cache = TextFeatureCache(text_cache_size)
        self._vocabularies: OrderedDict[tuple[tuple[str, ...], int | None], Vocabulary] = OrderedDict()
        self._vocabulary_lock = threading.Lock()

    # --- public API -----------------------------------------------------------------------------
    def detect(
        self,
        images: ImageInput | Sequence[ImageInput],
        classes: Sequence[str] | Sequence[Sequence[str]],
        threshold: float | None = None,
        chunk_size: int | None = None,
    ) -> Detections | list[Detections]:
        """Detect `classes` (one list for all images, or one list per image). Vocabularies longer
        than the model's token slots run in chunks (`chunk_size` names each, or packed).
        threshold: keep scores above it; None = the model's own (`processor.box_threshold`, saved
        with the weights; 0.5 unless they say otherwise)."""
        single = is_single_image(images)
        image_list = [images] if single else list(images)  # type: ignore[list-item]
        if len(classes) > 0 and not isinstance(classes[0], str):
            if len(classes) != len(image_list):
                raise ValueError(f"{len(classes)} class lists for {len(image_list)} images")
            vocabularies = [self.detection_vocabulary(c, chunk_size) for c in classes]  # type: ignore[arg-type]
        else:
            vocabularies = [self.detection_vocabulary(classes, chunk_size)] * len(image_list)  # type: ignore[arg-type]
        results = self.predict(image_list, vocabularies, threshold)
        return results[0] if single else results

    def ground(
        self,
        images: ImageInput | Sequence[ImageInput],
        caption: str | Sequence[str],
        phrases: Sequence[str] | Sequence[Sequence[str]] | None = None,
        spans: Sequence[Span | Sequence[Span]] | None = None,
        threshold: float | None = None,
    ) -> Detections | list[Detections]:
        """Ground the phrases of a caption (one caption for all images, or one per image);
        phrases are found in the caption (whole words), given as spans, or — if neither — are
        the caption's pieces between punctuation marks. Labels index the phrases. threshold: as
        `detect`."""
        single = is_single_image(images)
        image_list = [images] if single else list(images)  # type: ignore[list-item]
        if isinstance(caption, str):
            vocabularies = [self.grounding_vocabulary(caption, phrases, spans)] * len(image_list)  # type: ignore[arg-type]
        else:
            if len(caption) != len(image_list):
                raise ValueError(f"{len(caption)} captions for {len(image_list)} images")
            if spans is not None:
                raise ValueError("spans go with a single caption; for one caption per image give phrases")
            per_image = [None] * len(caption) if phrases is None else list(phrases)
            if len(per_image) != len(caption):
                raise ValueError(f"{len(per_image)} phrase lists for {len(caption)} captions")
            vocabularies = [self.grounding_vocabulary(c, p) for c, p in zip(caption, per_image)]  # type: ignore[arg-type]
        results = self.predict(image_list, vocabularies, threshold)
        return results[0] if single else results

    def answer(
        self,
        images: ImageInput | Sequence[ImageInput],
        questions: str | Sequence[str],
        top_k: int = 1,
    ) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """Answer questions about images with the VQA head: one question per image, one question for
        all images, or several questions about one image. Per question the `top_k` (answer, score)
        pairs, best first; a single image and a single question give that one list.

        Questions are batched (`batch_size`) only with questions about the same image: the fusion's
        attention reads the padding of a batch (as the official grounding does), so batching
        different images would make an image's answers depend on its neighbours' sizes."""
        if "vqa" not in self.model.heads:
            raise ValueError(f"{self.model.config.name} has no VQA head (no answer vocabulary)")
        single = is_single_image(images) and isinstance(questions, str)
        image_list = [images] if is_single_image(images) else list(images)  # type: ignore[list-item]
        question_list = [questions] if isinstance(questions, str) else list(questions)
        if not question_list or not image_list:
            raise ValueError("give at least one image and one question")
        if any(not isinstance(q, str) or not q.strip() for q in question_list):
            raise ValueError("every question must be a non-empty string")
        if len(image_list) == 1 and len(question_list) > 1:
            image_list = image_list * len(question_list)
        elif len(question_list) == 1 and len(image_list) > 1:
            question_list = question_list * len(image_list)
        elif len(image_list) != len(question_list):
            raise ValueError(f"{len(question_list)} questions for {len(image_list)} images")
        results: list[list[tuple[str, float]]] = []
        for group in _same_image_batches(image_list, self.batch_size):
            tensor, size = self.processor.prepare_image(image_list[group[0]])
            batch = self.processor.batch_images([tensor] * len(group), [size] * len(group))
            text = _stack_text([self.encode(question_list[i]).features for i in group])
            pixels = batch.pixel_values.to(self.device)
            with torch.no_grad():
                # one image: backbone and FPN once, O̊ shared by its questions
                regions = self.model.core.encode_images(pixels[:1])
                output = self.model(
                    pixels,
                    image_sizes=batch.image_sizes,
                    text_features=text,
                    heads=["vqa"],
                    region_features=[r.expand(len(group), *r.shape[1:]) for r in regions],
                )
            results.extend(self.processor.post_process_answers(output.vqa_logits, top_k))
        return results[0] if single else results

    def caption(
        self,
        images: ImageInput | Sequence[ImageInput],
        beam_size: int = 3,
        max_length: int = 30,
        length_penalty: float = 1.0,
    ) -> str | list[str]:
        """Describe images with the caption head: beam search (`beam_size` 1 is greedy) up to
        `max_length` tokens. A single image gives one string."""
        if "caption" not in self.model.heads:
            raise ValueError(f"{self.model.config.name} has no caption head")
        if beam_size < 1 or max_length < 1:
            raise ValueError(f"beam_size and max_length must be >= 1, got {beam_size} and {max_length}")
        single = is_single_image(images)
        image_list = [images] if single else list(images)  # type: ignore[list-item]
        captions: list[str] = []
        for image in image_list:  # one image per decoding run: see `answer` on padding
            prepared = [self.processor.prepare_image(image)]
            batch = self.processor.batch_images([t for t, _ in prepared], [s for _, s in prepared])
            ids = self.model.generate_captions(
                batch.pixel_values.to(self.device),
                batch.image_sizes,
                bos_token_id=self.processor.caption_start_id,
                eos_token_id=self.processor.caption_end_id,
                max_length=max_length,
                beam_size=beam_size,
                length_penalty=length_penalty,
            )
            captions.extend(self.processor.decode_captions(ids))
        return captions[0] if single else captions

    def detection_vocabulary(self, classes: Sequence[str], chunk_size: int | None = None) -> Vocabulary:
        """The chunked prompts of a class list; kept for the next call with the same list, so a
        folder of images does not re-tokenize a long vocabulary per image."""
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
            return self._chunk(classes, chunk_size)  # let the prompt builder name the problem
        key = (tuple(classes), chunk_size)
        with self._vocabulary_lock:
            vocabulary = self._vocabularies.get(key)
        if vocabulary is None:
            vocabulary = self._chunk(classes, chunk_size)  # outside the lock: tokenizing can take a while
            with self._vocabulary_lock:
                self._vocabularies[key] = vocabulary
                while len(self._vocabularies) > max(1, self.text_cache.max_entries):
                    self._vocabularies.popitem(last=False)
        return vocabulary

    def _chunk(self, classes: Sequence[str], chunk_size: int | None) -> Vocabulary:
        chunks = self.processor.chunk_classes(classes, chunk_size)
        names = [n for c in chunks for n in c.prompt.names]
        return Vocabulary(names, chunks, DETECTION_SEPARATOR.join(names))

    def grounding_vocabulary(
        self,
        caption: str,
        phrases: Sequence[str] | None = None,
        spans: Sequence[Span | Sequence[Span]] | None = None,
    ) -> Vocabulary:
        prompt = grounding_prompt(caption, phrases, spans)
        self.processor.check_prompt(prompt)  # a phrase the tokenizer reads as [UNK] only: PromptWarning
        encoded = self.encode(prompt.text)  # needed for the forward anyway; cached from here on
        prompt.positive_map(encoded.offsets, encoded.attention_mask)  # every phrase must fit the token slots
        return Vocabulary(list(prompt.names), [PromptChunk(prompt, 0)], prompt.text)

    def clear_text_cache(self) -> None:
        """Forget cached text features (needed after changing the model's text-side weights)."""
        self.text_cache.clear()
        with self._vocabulary_lock:
            self._vocabularies.clear()

    # --- the pipeline ---------------------------------------------------------------------------
    def predict(
        self,
        images: Sequence[ImageInput],
        vocabularies: Sequence[Vocabulary],
        threshold: float | None = None,
        postprocessor: PostProcessor | None = None,
    ) -> list[Detections]:
        """One `Vocabulary` per image -> one `Detections` per image, scores > threshold (None: the
        model's `processor.box_threshold`); `postprocessor`: this call's post-processing (default:
        the predictor's). Each result keeps the image it was computed on (`Detections.image`, for
        `plot` / `save`), and the path when the image was given as one."""
        threshold = self.resolve_threshold(threshold)
        if len(images) != len(vocabularies):
            raise ValueError(f"{len(vocabularies)} prompts for {len(images)} images")
        results = []
        # up to `read_ahead` images are prepared at once, so that batches group images of one size
        for group in _batches(list(zip(images, vocabularies)), self.read_ahead):
            # read once: the same RGB pixels feed the model and the drawings of the result
            pictures = [load_image(image) for image, _ in group]
            prepared = [self.processor.prepare_image(picture) for picture in pictures]
            found = self.predict_prepared(prepared, [v for _, v in group], threshold, postprocessor)
            for detections, picture, (image, _) in zip(found, pictures, group):
                detections.image = picture
                if isinstance(image, (str, os.PathLike)):
                    detections.image_path = Path(image)
            results.extend(found)
        return results

    @property
    def read_ahead(self) -> int:
        """Images to prepare before batching them (`BUCKET_WINDOW` batches' worth, 1 unbatched)."""
        return 1 if self.batch_size == 1 else self.batch_size * BUCKET_WINDOW

    def resolve_threshold(self, threshold: float | None) -> float:
        """`threshold`, or the model's own default when None; checked to lie in [0, 1]."""
        if threshold is None:
            threshold = self.processor.box_threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        return float(threshold)

    def predict_prepared(
        self,
        prepared: Sequence[tuple[torch.Tensor, tuple[int, int]]],
        vocabularies: Sequence[Vocabulary],
        threshold: float | None = None,
        postprocessor: PostProcessor | None = None,
    ) -> list[Detections]:
        """Like `predict`, for images already through `processor.prepare_image` (the results hold
        no image: set `Detections.image` to draw them with `plot()` without an argument)."""
        threshold = self.resolve_threshold(threshold)
        jobs = [(i, chunk) for i, vocabulary in enumerate(vocabularies) for chunk in vocabulary.chunks]
        if self.batch_size > 1:
            # bucketing: a batch is padded to its largest image, and the fusion attends over padded
            # pixels too (official), so images of one padded size batch together — less compute,
            # and a batch of one size gives each image its result alone (only a batch at the
            # boundary between two sizes mixes them); stable sort: input order otherwise
            jobs.sort(key=lambda job: self.processor.padded_size(prepared[job[0]][0]))
        found: list[list[RawDetections]] = [[] for _ in prepared]
        image_features = _ImageFeatureCache()
        for batch in _batches(jobs, self.batch_size):
            for (image_index, chunk), detections in zip(
                batch,
                self._run(
                    [prepared[i][0] for i, _ in batch],
                    [c.prompt for _, c in batch],
                    postprocessor,
                    image_keys=[i for i, _ in batch],
                    image_features=image_features,
                ),
            ):
                detections.labels = detections.labels + chunk.label_offset
                found[image_index].append(detections)
        results = []
        for (tensor, (height, width)), vocabulary, parts in zip(prepared, vocabularies, found):
            merged = RawDetections.cat(parts)
            merged = merged.select(torch.sort(merged.scores, descending=True, stable=True).indices)
            merged = merged.select(merged.scores > threshold)
            scale = merged.boxes.new_tensor([width / tensor.shape[2], height / tensor.shape[1]] * 2)
            boxes = merged.boxes * scale
            masks = None if merged.masks is None else paste_masks(merged.masks, boxes, (height, width))
            results.append(
                Detections(
                    boxes,
                    merged.scores,
                    merged.labels,
                    list(vocabulary.names),
                    (height, width),
                    vocabulary.text,
                    masks,
                )
            )
        return results

    @torch.no_grad()
    def _run(
        self,
        tensors: list[torch.Tensor],
        prompts: list[Prompt],
        postprocessor: PostProcessor | None = None,
        image_keys: list[int] | None = None,
        image_features: _ImageFeatureCache | None = None,
    ) -> list[RawDetections]:
        """One forward pass over images paired with prompts -> detections in the input frame.

        image_keys: which image each entry is (equal keys: the same image, e.g. the chunks of a long
        vocabulary); with `image_features`, backbone and FPN run once per distinct image and are
        reused by the next batch of the same images."""
        batch = self.processor.batch_images(tensors, [tuple(t.shape[1:]) for t in tensors])
        encoded = [self.encode(p.text) for p in prompts]
        text = _stack_text([e.features for e in encoded])
        positive_maps = [p.positive_map(e.offsets, e.attention_mask) for p, e in zip(prompts, encoded)]
        pixel_values = batch.pixel_values.to(self.device)
        region_features = None
        if image_keys is not None and image_features is not None:
            region_features = image_features.get(self.model, pixel_values, image_keys)
        output = self.model(
            pixel_values, image_sizes=batch.image_sizes, text_features=text, region_features=region_features
        )
        found = self.processor.post_process_detections(
            output, positive_maps, postprocessor or self.postprocessor
        )
        if "mask" in self.model.heads:
            # each detection's mask is asked for with the tokens of its own label
            slots = output.fused_token_features.shape[1]
            weights = [
                fit_token_slots(pm, slots).to(self.device)[d.labels].float()
                for pm, d in zip(positive_maps, found)
            ]
            logits = self.model.predict_mask_logits(output, [d.boxes for d in found], weights)
            for detections, mask_logits in zip(found, logits):
                detections.masks = mask_logits.sigmoid()
        return [
            RawDetections(
                d.boxes.cpu(), d.scores.cpu(), d.labels.cpu(), None if d.masks is None else d.masks.cpu()
            )
            for d in found
        ]

    def encode(self, text: str) -> EncodedText:
        """P̊ of one prompt text, from the cache when it was encoded before."""
        entry = self.text_cache.get(text)
        if entry is None:
            tokens = self.processor.tokenize(text)
            with torch.no_grad():
                features = self.model.encode_text(
                    tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
                )
            entry = EncodedText(features, tokens.offsets[0], tokens.attention_mask[0])
            self.text_cache.put(text, entry)
        return entry


class _ImageFeatureCache:
    """O̊ (the FPN levels) per image, for the images of the current batch. The chunk prompts of one
    image see the same pixels, so backbone and FPN — about a fifth of a GLIP-T pass — run once for
    all of them (the official chunked evaluation runs them once per chunk). Features are kept per
    padded batch size, which they depend on, and dropped once a batch no longer shows their image
    (the jobs of one image are consecutive)."""

    def __init__(self) -> None:
        self.features: dict[tuple[int, tuple[int, int]], list[torch.Tensor]] = {}

    def get(self, model: GLIPv2, pixel_values: torch.Tensor, image_keys: list[int]) -> list[torch.Tensor]:
        """pixel_values (B, 3, H, W), row j showing image `image_keys[j]` -> O̊ per level (B, C, H_l, W_l)."""
        size = (int(pixel_values.shape[-2]), int(pixel_values.shape[-1]))
        wanted = {(key, size) for key in image_keys}
        self.features = {k: v for k, v in self.features.items() if k in wanted}
        missing = list(dict.fromkeys(key for key in image_keys if (key, size) not in self.features))
        if missing:
            levels = model.core.encode_images(pixel_values[[image_keys.index(k) for k in missing]])
            for j, key in enumerate(missing):
                self.features[(key, size)] = [level[j : j + 1] for level in levels]
        rows = [self.features[(key, size)] for key in image_keys]
        if len(rows) == 1:
            return rows[0]
        return [torch.cat([row[level] for row in rows]) for level in range(len(rows[0]))]


def _stack_text(features: list[TextFeatures]) -> TextFeatures:
    """Concatenate single-prompt features along the batch, zero-padding to the longest (pads are
    masked out of every attention that reads them, so their values do not matter)."""
    length = max(f.hidden.shape[1] for f in features)

    def pad(t: torch.Tensor) -> torch.Tensor:
        extra = length - t.shape[1]
        return (
            t if extra == 0 else torch.nn.functional.pad(t, (0, 0, 0, extra) if t.ndim == 3 else (0, extra))
        )

    return TextFeatures(
        torch.cat([pad(f.hidden) for f in features]),
        torch.cat([pad(f.embedded) for f in features]),
        torch.cat([pad(f.mask) for f in features]),
    )
