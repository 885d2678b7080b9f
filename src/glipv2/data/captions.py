"""Image captioning samples, one per image with all its reference captions, from either of the two
layouts captioning data comes in:

* COCO captions (`captions_train2017.json`, what ShapesWorld writes)::

      {"images": [{"id", "file_name", ...}], "annotations": [{"id", "image_id", "caption"}]}

* the Karpathy split (`dataset_coco.json`, also used for Flickr30k), told apart by `sentences`::

      {"images": [{"filepath", "filename", "split", "cocoid" | "imgid",
                   "sentences": [{"raw", "tokens", ...}]}]}

Malformed records, and images left without a usable caption, are skipped and counted in a
`SkipCounter`; a file that is not JSON or of neither layout is a `ValueError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..processing.processor import load_image
from ..utils.io import read_json
from .grounding import DataError, SkipCounter, _is_id

# "restval" is the part of COCO val2014 that the Karpathy split gives to training
KARPATHY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "restval"),
    "val": ("val",),
    "test": ("test",),
    "restval": ("restval",),
}


@dataclass
class CaptionSample:
    """One image and its reference captions. meta: the image `path`, and for the Karpathy layout
    its `split` and `filepath`."""

    image: Image.Image
    image_id: int | str
    captions: list[str]
    file_name: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _ImageEntry:
    image_id: int | str
    file_name: str
    captions: list[str]
    filepath: str = ""
    split: str | None = None


def _caption_text(value: Any) -> str | None:
    """A usable caption: a string with some non-space text, its outer whitespace stripped."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


class CaptionDataset(torch.utils.data.Dataset):
    """COCO-captions or Karpathy-split json as `CaptionSample`s, one per image that has a caption.
    `split` selects Karpathy images ("train" also takes "restval"); the COCO layout has no splits
    (a file is one split), so `split` must be None there."""

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        split: str | None = None,
        skips: SkipCounter | None = None,
    ) -> None:
        data = read_json(ann_file, "caption annotation")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"{ann_file}: not a captions json (a JSON object with an 'images' list expected)")
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.skips = skips if skips is not None else SkipCounter()
        self.split = split
        if "annotations" in data:
            if split is not None:
                raise ValueError(
                    f"{ann_file}: a COCO captions json has no splits (the file is one); split must be "
                    f"None, got {split!r}"
                )
            if not isinstance(data["annotations"], list):
                raise DataError(f"{ann_file}: 'annotations' must be a list")
            self.layout = "coco"
            entries = self._read_coco(data)
        elif any(isinstance(im, dict) and "sentences" in im for im in data["images"]):
            if split is not None and split not in KARPATHY_SPLITS:
                raise ValueError(f"unknown split {split!r}; expected one of {', '.join(KARPATHY_SPLITS)}")
            self.layout = "karpathy"
            entries = self._read_karpathy(data["images"], split)
        else:
            raise DataError(
                f"{ann_file}: neither a COCO captions json (no 'annotations' list) nor a Karpathy-split "
                "json (no 'sentences' in its images)"
            )
        self._entries: list[_ImageEntry] = []
        for entry in entries:
            if entry.captions:
                self._entries.append(entry)
            else:
                self.skips.add("image without a usable caption")

    def _read_coco(self, data: dict[str, Any]) -> list[_ImageEntry]:
        entries: dict[int | str, _ImageEntry] = {}
        for info in data["images"]:
            image_id = info.get("id") if isinstance(info, dict) else None
            file_name = info.get("file_name") if isinstance(info, dict) else None
            if not _is_id(image_id) or not isinstance(file_name, str) or not file_name:
                self.skips.add("image entry without an integer or string id and a file_name")
            elif image_id in entries:
                self.skips.add("duplicate image id")
            else:
                entries[image_id] = _ImageEntry(image_id, file_name, [])
        for ann in data["annotations"]:
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            entry = entries.get(image_id) if _is_id(image_id) else None
            if entry is None:
                self.skips.add("caption of an unknown image")
                continue
            text = _caption_text(ann.get("caption"))
            if text is None:
                self.skips.add("caption that is not a non-empty string")
                continue
            entry.captions.append(text)
        return list(entries.values())

    def _read_karpathy(self, images: list[Any], split: str | None) -> list[_ImageEntry]:
        wanted = None if split is None else KARPATHY_SPLITS[split]
        entries: dict[int | str, _ImageEntry] = {}
        for info in images:
            if not isinstance(info, dict):
                self.skips.add("image entry that is not an object")
                continue
            image_id = info.get("cocoid", info.get("imgid"))
            file_name, filepath, image_split = (
                info.get("filename"),
                info.get("filepath", ""),
                info.get("split"),
            )
            if not _is_id(image_id) or not isinstance(file_name, str) or not file_name:
                self.skips.add("image entry without a cocoid/imgid and a filename")
                continue
            if not isinstance(filepath, str) or not isinstance(image_split, (str, type(None))):
                self.skips.add("image entry with a filepath or split that is not a string")
                continue
            if wanted is not None and image_split not in wanted:
                continue  # another split: not a skip
            if image_id in entries:
                self.skips.add("duplicate image id")
                continue
            sentences = info.get("sentences")
            if not isinstance(sentences, list):
                self.skips.add("image entry without a 'sentences' list")
                sentences = []
            captions = []
            for sentence in sentences:
                text = _sentence_text(sentence)
                if text is None:
                    self.skips.add("sentence without raw text or tokens")
                else:
                    captions.append(text)
            entries[image_id] = _ImageEntry(image_id, file_name, captions, filepath, image_split)
        return list(entries.values())

    def set_epoch(self, epoch: int) -> None:
        """Nothing is drawn per epoch."""

    def __len__(self) -> int:
        return len(self._entries)

    def references(self) -> dict[int | str, list[str]]:
        """Image id -> its reference captions, for every kept image (what a captioning score needs)."""
        return {e.image_id: list(e.captions) for e in self._entries}

    def image_path(self, index: int) -> Path:
        """The image file of sample `index`: for the Karpathy layout `image_dir/filepath/filename`
        when that exists (the COCO folder of the release), else `image_dir/filename`."""
        entry = self._entries[index]
        if entry.filepath:
            nested = self.image_dir / entry.filepath / entry.file_name
            try:
                if nested.is_file():
                    return nested
            except (OSError, ValueError):  # a name too long, or with a NUL: not there
                pass
        return self.image_dir / entry.file_name

    def __getitem__(self, index: int) -> CaptionSample:
        entry = self._entries[index]
        path = self.image_path(index)
        meta: dict[str, Any] = {"path": str(path)}
        if self.layout == "karpathy":
            meta.update(split=entry.split, filepath=entry.filepath)
        return CaptionSample(load_image(path), entry.image_id, list(entry.captions), entry.file_name, meta)


def _sentence_text(sentence: Any) -> str | None:
    """A Karpathy sentence's `raw` text, else its `tokens` joined; None when it has neither."""
    if not isinstance(sentence, dict):
        return None
    text = _caption_text(sentence.get("raw"))
    tokens = sentence.get("tokens")
    if text is None and isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens):
        text = _caption_text(" ".join(tokens))
    return text
