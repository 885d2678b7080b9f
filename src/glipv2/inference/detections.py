"""`Detections`: what the `Predictor` returns for one image, in original image pixels."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..utils.boxes import xyxy_to_xywh
from ..utils.io import atomic_path, check_destination

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class Detections:
    """boxes: (N, 4) xyxy in original image pixels; scores: (N,) in [0, 1], descending;
    labels: (N,) int64 index into `names` (the class list, or the grounded phrases);
    names: the prompt's label names; image_size: original (height, width); prompt: the text
    (for a chunked vocabulary, the full vocabulary joined as one prompt would be); masks:
    (N, height, width) bool instance masks in original image pixels, from models with a mask head
    (instance segmentation for class prompts, referring segmentation for grounded phrases).

    image: the RGB image the detections were computed on, when the `Predictor` read or was given
    it (for `plot` / `save`; not part of `to_dict` or any JSON); image_path: the file it was read
    from, which `save` refuses to overwrite."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    image_size: tuple[int, int]
    prompt: str = ""
    masks: torch.Tensor | None = None
    image: Image.Image | None = field(default=None, kw_only=True, repr=False, compare=False)
    image_path: Path | None = field(default=None, kw_only=True, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def label_names(self) -> list[str]:
        """The name of each detection's label, (N,)."""
        return [self.names[i] for i in self.labels.tolist()]

    def __getitem__(self, index: torch.Tensor | slice | int) -> Detections:
        if isinstance(index, int):
            index = torch.tensor([index])
        return Detections(
            self.boxes[index],
            self.scores[index],
            self.labels[index],
            self.names,
            self.image_size,
            self.prompt,
            None if self.masks is None else self.masks[index],
            image=self.image,
            image_path=self.image_path,
        )

    def above(self, threshold: float) -> Detections:
        """Only the detections scoring at least `threshold`."""
        return self[self.scores >= threshold]

    def to_coco(
        self,
        image_id: int | str = 0,
        category_ids: list[int] | dict[int, int] | None = None,
        legacy_box_size: bool = True,
    ) -> list[dict[str, Any]]:
        """COCO results entries `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`, with
        `"segmentation"` (compressed RLE) when the detections have masks.

        image_id: the image's id in the annotations; 0 when omitted (one image, nothing to match it
        with). category_ids maps a label index to a category id (default label + 1). legacy_box_size
        writes w = x2 - x1 + 1 as the official evaluation does (maskrcnn-benchmark's xywh
        conversion), so AP matches the official numbers."""
        segmentations = self.mask_rles()
        # float64: the numbers Python-float arithmetic on the float32 boxes gives
        xywh = xyxy_to_xywh(self.boxes.double(), legacy=legacy_box_size).tolist()
        results = []
        for i, (bbox, score, label) in enumerate(zip(xywh, self.scores.tolist(), self.labels.tolist())):
            category = label + 1 if category_ids is None else int(category_ids[label])
            entry = {"image_id": image_id, "category_id": category, "bbox": bbox, "score": score}
            if segmentations is not None:
                entry["segmentation"] = segmentations[i]
            results.append(entry)
        return results

    def mask_rles(self) -> list[dict[str, Any]] | None:
        """Each mask as COCO compressed RLE `{"size": [h, w], "counts": str}`, or None without masks."""
        if self.masks is None:
            return None
        import numpy as np
        from pycocotools import mask as mask_utils

        rles = []
        for mask in self.masks.detach().cpu().numpy().astype(np.uint8):
            rle = mask_utils.encode(np.asfortranarray(mask))
            rles.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")})
        return rles

    def to_dict(self, decimals: int = 4) -> list[dict[str, Any]]:
        """JSON-ready detections `{"box_xyxy", "score", "label", "label_index"}`, plus `"mask_rle"`
        (COCO compressed RLE) when the detections have masks."""
        segmentations = self.mask_rles()
        out = []
        for i, (box, score, label) in enumerate(
            zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist())
        ):
            entry = {
                "box_xyxy": [round(v, decimals) for v in box],
                "score": round(score, 6),
                "label": self.names[label],
                "label_index": label,
            }
            if segmentations is not None:
                entry["mask_rle"] = segmentations[i]
            out.append(entry)
        return out

    def to_transformers(self) -> list[dict[str, Any]]:
        """The result of a transformers `pipeline("zero-shot-object-detection")` for one image:
        `[{"score": float, "label": str, "box": {"xmin": int, "ymin": int, "xmax": int, "ymax": int}}]`,
        best first. The box corners are truncated to whole pixels as the pipeline does
        (`box.int()`), so code written for OWL-ViT / Grounding DINO pipelines reads these as is."""
        return [
            {"score": score, "label": self.names[label], "box": dict(zip(_PIPELINE_BOX_KEYS, box))}
            for score, label, box in zip(
                self.scores.tolist(), self.labels.tolist(), self.boxes.detach().cpu().int().tolist()
            )
        ]

    def plot(
        self, image: Image.Image | None = None, *, line_width: int | None = None, mask_opacity: float = 0.45
    ) -> Image.Image:
        """The annotated image as a new PIL image: masks tinted, boxes, and "name 0.87" tags, one
        colour per label (`glipv2.draw_detections`). image: what to draw on (default: the image the
        detections were computed on, kept by the `Predictor`); it must be the image's original size."""
        from .visualize import draw_detections

        image = image if image is not None else self.image
        if image is None:
            raise ValueError(
                "these detections hold no image (made with predict_prepared, sliced from raw tensors, or "
                "built by hand): pass one, dets.plot(image)"
            )
        height, width = self.image_size
        if image.size != (width, height):
            raise ValueError(
                f"the image is {image.size[0]}x{image.size[1]}, the detections are for {width}x{height}"
            )
        return draw_detections(image, self, line_width=line_width, mask_opacity=mask_opacity)

    def save(
        self, path: str | os.PathLike[str], image: Image.Image | None = None, **plot_options: Any
    ) -> Path:
        """Write `plot(image)` to `path` (the format from its suffix: .png, .jpg, ...), atomically:
        an interruption never leaves half a file. Refuses (`ValueError`) to write over the image
        file the detections were computed on, and over a folder, symlink or device. Returns `path`."""
        from PIL import Image as PILImage

        path = Path(path)
        image_format = PILImage.registered_extensions().get(path.suffix.lower())
        if image_format is None:
            raise ValueError(f"{path}: unknown image type {path.suffix!r}; use e.g. .png or .jpg")
        # a `DestinationError`, which is a ValueError
        check_destination(path, [self.image_path] if self.image_path is not None else [])
        picture = self.plot(image, **plot_options)
        with atomic_path(path) as tmp:
            picture.save(tmp, format=image_format)
        return path

    def to_supervision(self) -> Any:
        """A `supervision.Detections` (needs the optional `supervision` package)."""
        try:
            import supervision as sv
        except ImportError as err:
            raise ImportError(
                "to_supervision() needs the optional package: pip install 'glipv2[supervision]'"
            ) from err
        import numpy as np

        return sv.Detections(
            xyxy=self.boxes.detach().cpu().numpy().astype(np.float32),
            confidence=self.scores.detach().cpu().numpy().astype(np.float32),
            class_id=self.labels.detach().cpu().numpy().astype(int),
            mask=None if self.masks is None else self.masks.detach().cpu().numpy().astype(bool),
            data={"class_name": np.array(self.label_names, dtype=object)},
        )

    def __repr__(self) -> str:
        shown = ", ".join(f"{n} {s:.2f}" for n, s in zip(self.label_names[:5], self.scores.tolist()[:5]))
        more = f", … {len(self) - 5} more" if len(self) > 5 else ""
        return f"Detections({len(self)} on {self.image_size[1]}x{self.image_size[0]}: {shown}{more})"


# the key order of transformers' `ZeroShotObjectDetectionPipeline._get_bounding_box`
_PIPELINE_BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
