"""`Detections`: what the `Predictor` returns for one image, in original image pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..utils.boxes import xyxy_to_xywh


@dataclass
class Detections:
    """boxes: (N, 4) xyxy in original image pixels; scores: (N,) in [0, 1], descending;
    labels: (N,) int64 index into `names` (the class list, or the grounded phrases);
    names: the prompt's label names; image_size: original (height, width); prompt: the text
    (for a chunked vocabulary, the full vocabulary joined as one prompt would be); masks:
    (N, height, width) bool instance masks in original image pixels, from models with a mask head
    (instance segmentation for class prompts, referring segmentation for grounded phrases)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    image_size: tuple[int, int]
    prompt: str = ""
    masks: torch.Tensor | None = None

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
        )

    def above(self, threshold: float) -> Detections:
        """Only the detections scoring at least `threshold`."""
        return self[self.scores >= threshold]

    def to_coco(
        self,
        image_id: int | str,
        category_ids: list[int] | dict[int, int] | None = None,
        legacy_box_size: bool = True,
    ) -> list[dict[str, Any]]:
        """COCO results entries `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`, with
        `"segmentation"` (compressed RLE) when the detections have masks.

        category_ids maps a label index to a category id (default label + 1). legacy_box_size
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
