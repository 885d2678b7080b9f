"""`Detections`: what the `Predictor` returns for one image, in original image pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Detections:
    """boxes: (N, 4) xyxy in original image pixels; scores: (N,) in [0, 1], descending;
    labels: (N,) int64 index into `names` (the class list, or the grounded phrases);
    names: the prompt's label names; image_size: original (height, width); prompt: the text
    (for a chunked vocabulary, the full vocabulary joined as one prompt would be)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    image_size: tuple[int, int]
    prompt: str = ""

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def label_names(self) -> list[str]:
        """The name of each detection's label, (N,)."""
        return [self.names[i] for i in self.labels.tolist()]

    def __getitem__(self, index: torch.Tensor | slice | int) -> Detections:
        if isinstance(index, int):
            index = torch.tensor([index])
        return Detections(self.boxes[index], self.scores[index], self.labels[index], self.names, self.image_size,
                          self.prompt)

    def above(self, threshold: float) -> Detections:
        """Only the detections scoring at least `threshold`."""
        return self[self.scores >= threshold]

    def to_coco(self, image_id: int | str, category_ids: list[int] | dict[int, int] | None = None,
                legacy_box_size: bool = True) -> list[dict[str, Any]]:
        """COCO results entries `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`.

        category_ids maps a label index to a category id (default label + 1). legacy_box_size
        writes w = x2 - x1 + 1 as the official evaluation does (maskrcnn-benchmark's xywh
        conversion), so AP matches the official numbers."""
        add = 1.0 if legacy_box_size else 0.0
        results = []
        for (x1, y1, x2, y2), score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist()):
            category = label + 1 if category_ids is None else int(category_ids[label])
            results.append({"image_id": image_id, "category_id": category,
                            "bbox": [x1, y1, x2 - x1 + add, y2 - y1 + add], "score": score})
        return results

    def to_dict(self, decimals: int = 4) -> list[dict[str, Any]]:
        """JSON-ready detections `{"box_xyxy", "score", "label", "label_index"}`."""
        return [{"box_xyxy": [round(v, decimals) for v in box], "score": round(score, 6), "label": self.names[label],
                 "label_index": label}
                for box, score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist())]

    def to_supervision(self) -> Any:
        """A `supervision.Detections` (needs the optional `supervision` package)."""
        try:
            import supervision as sv
        except ImportError as err:
            raise ImportError("to_supervision() needs the optional package: pip install 'glipv2[supervision]'") from err
        import numpy as np

        return sv.Detections(xyxy=self.boxes.detach().cpu().numpy().astype(np.float32),
                             confidence=self.scores.detach().cpu().numpy().astype(np.float32),
                             class_id=self.labels.detach().cpu().numpy().astype(int),
                             data={"class_name": np.array(self.label_names, dtype=object)})

    def __repr__(self) -> str:
        shown = ", ".join(f"{n} {s:.2f}" for n, s in zip(self.label_names[:5], self.scores.tolist()[:5]))
        more = f", … {len(self) - 5} more" if len(self) > 5 else ""
        return f"Detections({len(self)} on {self.image_size[1]}x{self.image_size[0]}: {shown}{more})"
