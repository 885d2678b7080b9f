"""`GLIPv2Processor`: everything between user inputs and model tensors, and back.

Images: read (path, PIL or array), resized as the official test transform (shorter side
`min_size`, longer side at most `max_size`, PIL bilinear), normalised (RGB -> BGR 0-255, mean/std)
and zero-padded to a multiple of 32. Text: prompts built, tokenized with the model's padding policy,
phrase×token positive maps from the tokenizer's offsets, long vocabularies split into chunks.
Outputs: the grounding head's detections (`PostProcessor`, official ATSS post-processing) and the
mask head's masks pasted into the image.

Saved beside the model (`save_pretrained`): `processor_config.json` and the tokenizer files in
`tokenizer/` (the transformers idiom). A folder written before the processor had its own file
loads with the settings its `config.json` implies.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.models.detection.roi_heads import paste_masks_in_image
from transformers import PreTrainedTokenizerBase

from ..modeling.config import GLIPv2Config
from ..modeling.glipv2 import CONFIG_NAME, TOKENIZER_DIR
from ..modeling.outputs import GLIPv2Output
from ..utils.io import atomic_write_text, read_json
from ..utils.shipped import shipped_model_dir
from .image import image_to_tensor, pad_batch, padded_size
from .postprocess import PostProcessor, RawDetections
from .prompts import Prompt, PromptChunk, check_prompt_tokens, chunk_class_names
from .text import TokenizedPrompts, load_tokenizer, tokenize_prompts

PROCESSOR_NAME = "processor_config.json"
# `GLIPv2Processor.box_threshold` of a model whose processor config does not say: 0.5, the usual
# display threshold of GLIP demos; trained weights may save their own (the shipped tiny ones do)
DEFAULT_BOX_THRESHOLD = 0.5

ImageInput = str | os.PathLike | Image.Image | np.ndarray


@dataclass
class ImageBatch:
    """pixel_values: (B, 3, H, W) normalised BGR, zero-padded; pixel_mask: (B, H, W) bool, True on
    real pixels; image_sizes: (B, 2) (h, w) after resizing, before padding; original_sizes: (B, 2)
    (h, w) of the inputs — detections are mapped back to these."""

    pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    image_sizes: torch.Tensor
    original_sizes: torch.Tensor


def official_resize_size(width: int, height: int, min_size: int, max_size: int | None) -> tuple[int, int]:
    """(height, width) after the official test resize (maskrcnn-benchmark `Resize.get_size`): the
    shorter side becomes `min_size` unless the longer one would exceed `max_size`; the longer side
    is truncated with int()."""
    size = min_size
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = round(max_size * short / long)
            if size < 1:  # an extreme aspect ratio: the official arithmetic would give a side of 0
                return (max_size, 1) if height > width else (1, max_size)
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def is_single_image(images: object) -> bool:
    """True for one image (path, PIL image or array), False for a sequence of them."""
    return isinstance(images, (str, os.PathLike, Image.Image, np.ndarray))


def load_image(source: ImageInput, *, exif_orientation: bool = True) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an (H, W[, 3|4]) uint8 array, as an image viewer
    shows it: EXIF orientation applied (`exif_orientation=False` keeps the stored pixel frame),
    16-bit and float images scaled to 8 bits over their full range (see `to_8bit`), palette /
    grey+alpha / CMYK converted, an animation's first frame. Unreadable or corrupt files, and
    directories, raise `ValueError` naming the path."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ValueError(f"{path}: is a directory, not an image file")
        if not path.is_file():
            raise ValueError(f"{path}: no such image file")
        try:
            with Image.open(path) as image:
                image.load()  # decode now, so that a truncated file fails here
                return _viewer_rgb(image, exif_orientation)
        except Image.DecompressionBombError as err:
            raise ValueError(f"{path}: cannot read the image ({err})") from err
        # Pillow's decoders raise many types on corrupt input (OSError, SyntaxError, struct.error,
        # IndexError, ...): any failure to decode one file is that file's problem, named as such
        except Exception as err:
            raise ValueError(f"{path}: cannot read the image ({err or type(err).__name__})") from err
    if isinstance(source, Image.Image):
        try:
            return _viewer_rgb(source, exif_orientation)
        except (OSError, SyntaxError, ValueError) as err:  # a lazily opened, corrupt file
            raise ValueError(f"cannot read the image ({err or type(err).__name__})") from err
    if isinstance(source, np.ndarray):
        if (
            source.dtype != np.uint8
            or source.ndim not in (2, 3)
            or (source.ndim == 3 and source.shape[2] not in (3, 4))
        ):
            raise ValueError(
                f"an image array must be uint8 (H, W), (H, W, 3) or (H, W, 4), got "
                f"{source.dtype} {source.shape}"
            )
        return Image.fromarray(source).convert("RGB")
    raise ValueError(
        f"cannot use a {type(source).__name__} as an image (give a path, a PIL image or an array)"
    )


def _viewer_rgb(image: Image.Image, exif_orientation: bool) -> Image.Image:
    """`image` upright (EXIF orientation) and in RGB, 16-bit / float modes scaled to 8 bits."""
    if exif_orientation:
        image = _apply_exif_orientation(image)
    if image.mode in _WIDE_MODES:
        image = to_8bit(image)
    # an upright RGB image is returned as it is: `Predictor.predict` reads an image once and hands
    # the result to `prepare_image`, which reads it again; a copy there would be work for nothing
    return image if image.mode == "RGB" else image.convert("RGB")


# EXIF Orientation tag (0x0112): 1 is upright; 2-8 are the flips and rotations a viewer undoes.
_ORIENTATION_TAG = 0x0112


def exif_orientation_of(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of `image`; 1 when absent, unreadable or out of range (a viewer
    shows such a file as stored)."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    # a malformed EXIF block is ignored, as viewers do, rather than making the pixels unreadable
    except Exception:  # noqa: BLE001
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    if exif_orientation_of(image) == 1:
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001  (see exif_orientation_of)
        return image


# Modes whose samples do not fit 8 bits: Pillow's own conversion to RGB clips them at 255.
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float greyscale image -> mode "L", the full range mapped to
    0-255 (Pillow's `convert` clips every value above 255 to white):

    * I;16* (16-bit files): 0-65535 -> 0-255 (value / 257, rounded);
    * I: the same when every value lies in 0-65535 (16-bit data in a 32-bit container, how older
      Pillow opened 16-bit PNGs), else the image's own min-max range;
    * F: 0-1 -> 0-255 when every value lies in [0, 1] (the usual float-image convention), else the
      image's own min-max range; NaN reads as the minimum."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F" or image.mode == "I":
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if image.mode == "F" and low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0
        elif image.mode == "I" and low >= 0.0 and high <= 65535.0:
            low, high = 0.0, 65535.0
        values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    else:
        low, high = 0.0, 65535.0
    scale = 255.0 / (high - low) if high > low else 0.0
    scaled = np.clip(np.rint((values - low) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


class GLIPv2Processor:
    """Pre-processing of images and prompts for one model (its tokenizer and constants), and the
    post-processing of its heads' outputs (`postprocessor`, the grounding head's defaults)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        min_size: int = 800,
        max_size: int | None = 1333,
        resize: bool = True,
        size_divisibility: int = 32,
        pixel_mean: Sequence[float] = GLIPv2Config.pixel_mean,
        pixel_std: Sequence[float] = GLIPv2Config.pixel_std,
        max_query_len: int = 256,
        pad_to_max_query_len: bool = True,
        answers: Sequence[str] = (),
        postprocessor: PostProcessor | None = None,
        box_threshold: float = DEFAULT_BOX_THRESHOLD,
    ) -> None:
        if min_size < 1 or (max_size is not None and max_size < min_size):
            raise ValueError(f"invalid resize sizes: shorter side {min_size}, longer side at most {max_size}")
        if not 0.0 <= box_threshold <= 1.0:
            raise ValueError(f"box_threshold must lie in [0, 1], got {box_threshold}")
        self.tokenizer = tokenizer
        self.min_size = min_size
        self.max_size = max_size
        self.resize = resize
        self.size_divisibility = size_divisibility
        self.pixel_mean = tuple(pixel_mean)
        self.pixel_std = tuple(pixel_std)
        self.max_query_len = max_query_len
        self.pad_to_max_query_len = pad_to_max_query_len
        # the VQA head's answer vocabulary in its logit order (the model config's `vqa_answers`; not
        # saved in processor_config.json)
        self.answers = tuple(answers)
        self.postprocessor = postprocessor or PostProcessor()
        # the score a detection must exceed to be returned when a call gives no threshold
        # (`Predictor.detect(threshold=None)`, `glipv2 predict` without --threshold): a property of
        # the trained weights — how confident they are — so it is saved with them. The post-processing's
        # `inference_threshold` (0.05, official) is a different, lower cut that feeds NMS and AP.
        self.box_threshold = float(box_threshold)

    @classmethod
    def from_config(
        cls, config: GLIPv2Config, tokenizer: PreTrainedTokenizerBase | None = None, **overrides: Any
    ) -> GLIPv2Processor:
        """The processor a `GLIPv2Config` implies; `tokenizer` default: `config.tokenizer`.
        Overrides: constructor arguments, or `PostProcessor` ones (e.g. `one_label_per_box`)."""
        post = {k: overrides.pop(k) for k in list(overrides) if k in _POSTPROCESSOR_FIELDS}
        kwargs: dict[str, Any] = {
            "min_size": config.test_min_size,
            "max_size": config.test_max_size,
            "size_divisibility": config.size_divisibility,
            "pixel_mean": config.pixel_mean,
            "pixel_std": config.pixel_std,
            "max_query_len": config.max_query_len,
            "pad_to_max_query_len": config.pad_to_max_query_len,
            "answers": config.vqa_answers,
            "postprocessor": PostProcessor.from_config(config, **post),
        }
        kwargs.update(overrides)
        return cls(tokenizer if tokenizer is not None else load_tokenizer(config.tokenizer), **kwargs)

    @classmethod
    def for_model(cls, model: Any, **overrides: Any) -> GLIPv2Processor:
        """The processor saved with a loaded model (`model.name_or_path`), else the one its config
        implies."""
        directory = getattr(model, "name_or_path", None)
        if directory and Path(directory).is_dir():
            # the loaded model's answers: config overrides at load time may have added a VQA head
            return cls.from_pretrained(directory, **{"answers": model.config.vqa_answers, **overrides})
        return cls.from_config(model.config, **overrides)

    # --- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        post = self.postprocessor
        return {
            "min_size": self.min_size,
            "max_size": self.max_size,
            "resize": self.resize,
            "size_divisibility": self.size_divisibility,
            "pixel_mean": list(self.pixel_mean),
            "pixel_std": list(self.pixel_std),
            "max_query_len": self.max_query_len,
            "pad_to_max_query_len": self.pad_to_max_query_len,
            "box_threshold": self.box_threshold,
            "postprocessor": {k: getattr(post, k) for k in _POSTPROCESSOR_FIELDS},
        }

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write `processor_config.json` and the tokenizer files (`tokenizer/`) into `directory`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / PROCESSOR_NAME, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        self.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], **overrides: Any) -> GLIPv2Processor:
        """From a model folder (or a shipped model's name, as `GLIPv2.from_pretrained`):
        `processor_config.json` (or, in folders written before it existed, the settings of
        `config.json`) and `tokenizer/` (or the config's tokenizer)."""
        folder = shipped_model_dir(str(directory)) or Path(directory)
        config = GLIPv2Config.load(folder / CONFIG_NAME) if (folder / CONFIG_NAME).is_file() else None
        tokenizer_dir = folder / TOKENIZER_DIR
        if tokenizer_dir.is_dir():
            tokenizer = load_tokenizer(str(tokenizer_dir))
        elif config is not None:
            tokenizer = load_tokenizer(config.tokenizer)
        else:
            raise ValueError(f"{folder}: no {TOKENIZER_DIR}/ and no {CONFIG_NAME} to find a tokenizer from")
        if not (folder / PROCESSOR_NAME).is_file():
            if config is None:
                raise ValueError(f"{folder}: neither {PROCESSOR_NAME} nor {CONFIG_NAME}")
            return cls.from_config(config, tokenizer, **overrides)
        saved = read_json(folder / PROCESSOR_NAME, "processor config")
        if not isinstance(saved, dict):
            raise ValueError(f"{folder / PROCESSOR_NAME}: expected a mapping of processor settings")
        post = dict(saved.pop("postprocessor", {}))
        post.update({k: overrides.pop(k) for k in list(overrides) if k in _POSTPROCESSOR_FIELDS})
        # the answer vocabulary is the model's (config.json), kept in one place
        answers = overrides.pop("answers", config.vqa_answers if config is not None else ())
        unknown = sorted((set(saved) | set(overrides)) - _PROCESSOR_FIELDS) + sorted(
            set(post) - set(_POSTPROCESSOR_FIELDS)
        )
        if unknown:
            raise ValueError(f"{folder / PROCESSOR_NAME}: unknown setting(s) {', '.join(unknown)}")
        return cls(tokenizer, **{**saved, **overrides}, answers=answers, postprocessor=PostProcessor(**post))

    # --- images ---------------------------------------------------------------------------------
    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the model sees for an input of this size."""
        if not self.resize:
            return height, width
        return official_resize_size(width, height, self.min_size, self.max_size)

    def prepare_image(self, image: ImageInput) -> tuple[torch.Tensor, tuple[int, int]]:
        """-> ((3, h, w) normalised tensor at model resolution, original (height, width))."""
        pil = load_image(image)
        width, height = pil.size
        h, w = self.resized_size(width, height)
        if (h, w) != (height, width):
            pil = pil.resize((w, h), Image.BILINEAR)  # what torchvision's F.resize does on PIL images
        return image_to_tensor(pil, self.pixel_mean, self.pixel_std), (height, width)

    def padded_size(self, tensor: torch.Tensor) -> tuple[int, int]:
        """The (H, W) a prepared (3, h, w) image takes in a batch of its own."""
        return padded_size(int(tensor.shape[1]), int(tensor.shape[2]), self.size_divisibility)

    def batch_images(
        self, tensors: Sequence[torch.Tensor], original_sizes: Sequence[tuple[int, int]]
    ) -> ImageBatch:
        pixel_values, image_sizes = pad_batch(tensors, self.size_divisibility)
        mask = torch.zeros(pixel_values.shape[0], *pixel_values.shape[-2:], dtype=torch.bool)
        for i, (h, w) in enumerate(image_sizes.tolist()):
            mask[i, :h, :w] = True
        return ImageBatch(
            pixel_values, mask, image_sizes, torch.tensor(list(original_sizes), dtype=torch.long)
        )

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> ImageBatch:
        """Images -> one padded batch (see `ImageBatch`)."""
        if is_single_image(images):
            images = [images]
        prepared = [self.prepare_image(image) for image in images]
        return self.batch_images([t for t, _ in prepared], [s for _, s in prepared])

    # --- text -----------------------------------------------------------------------------------
    def tokenize(self, prompts: str | Sequence[str]) -> TokenizedPrompts:
        return tokenize_prompts(
            self.tokenizer,
            prompts if isinstance(prompts, str) else list(prompts),
            self.max_query_len,
            self.pad_to_max_query_len,
        )

    def positive_map(self, prompt: Prompt, tokens: TokenizedPrompts, index: int = 0) -> torch.Tensor:
        """(K, T) bool map of prompt `index` of a tokenized batch."""
        return prompt.positive_map(tokens.offsets[index], tokens.attention_mask[index])

    def check_prompt(self, prompt: Prompt) -> None:
        """Warn (`PromptWarning`) about labels of `prompt` that this tokenizer reads as [UNK] only."""
        check_prompt_tokens(prompt, self.tokenizer)

    def chunk_classes(self, class_names: Sequence[str], chunk_size: int | None = None) -> list[PromptChunk]:
        """A vocabulary as prompts that each fit the model's `max_query_len` tokens."""
        return chunk_class_names(class_names, self.tokenizer, self.max_query_len, chunk_size)

    # --- outputs ------------------------------------------------------------------------------------
    def post_process_detections(
        self,
        output: GLIPv2Output,
        positive_maps: Sequence[torch.Tensor],
        postprocessor: PostProcessor | None = None,
    ) -> list[RawDetections]:
        """The grounding head's detections of each image of a batch output, in the model's input
        frame (`postprocessor` default: this processor's)."""
        return (postprocessor or self.postprocessor)(output, list(positive_maps))

    def post_process_answers(self, vqa_logits: torch.Tensor, top_k: int = 1) -> list[list[tuple[str, float]]]:
        """(B, A) VQA logits -> per question the `top_k` answers with their scores, best first (the
        sigmoid of the logit: the head is trained against independent soft scores)."""
        if not self.answers:
            raise ValueError("this processor has no answer vocabulary (the model has no VQA head)")
        if vqa_logits.shape[-1] != len(self.answers):
            raise ValueError(f"{vqa_logits.shape[-1]} answer logits for a vocabulary of {len(self.answers)}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        scores, index = vqa_logits.float().sigmoid().topk(min(top_k, len(self.answers)), dim=-1)
        return [
            [(self.answers[i], float(s)) for s, i in zip(row_s, row_i)]
            for row_s, row_i in zip(scores.tolist(), index.tolist())
        ]

    @property
    def caption_start_id(self) -> int:
        """[CLS]: every caption starts with it, decoding too."""
        return int(self.tokenizer.cls_token_id)

    @property
    def caption_end_id(self) -> int:
        """[SEP]: the token that ends a caption."""
        return int(self.tokenizer.sep_token_id)

    def decode_captions(self, token_ids: Sequence[Sequence[int]]) -> list[str]:
        """Generated ids (without [CLS] / [SEP]) -> text, word pieces joined."""
        return [
            self.tokenizer.decode(
                list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True
            ).strip()
            for ids in token_ids
        ]


def paste_masks(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """(N, M, M) mask probabilities inside `boxes` (N, 4, legacy xyxy, image pixels) -> (N, H, W)
    bool masks of the image, probability > threshold (Mask R-CNN's paste, one pixel of padding)."""
    if masks.shape[0] == 0:
        return torch.zeros(0, *image_size, dtype=torch.bool)
    pasted = paste_masks_in_image(masks[:, None].float(), boxes.float(), image_size, padding=1)
    return pasted[:, 0] > threshold


# what processor_config.json holds: the constructors' keyword arguments (the tokenizer is saved as files)
_PROCESSOR_FIELDS = set(inspect.signature(GLIPv2Processor.__init__).parameters) - {
    "self",
    "tokenizer",
    "postprocessor",
    "answers",  # the model's `vqa_answers`, read from config.json
}
_POSTPROCESSOR_FIELDS = tuple(inspect.signature(PostProcessor.__init__).parameters)[1:]
