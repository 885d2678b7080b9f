"""ODinW-style evaluation: a folder of small COCO-json datasets, each with its own prompt.

Every COCO instances json under the root is one dataset (ODinW ships one per split, e.g.
`AerialMaritimeDrone/large/valid/annotations_without_background.json`, images beside it), scored
with COCO box AP like official GLIP's ODinW runs. The prompt is the dataset's categories (sorted
by id, names cleaned) as a detection prompt, or, with a prompt file beside the json, the official
`CAPTION_PROMPT` form: per category `prefix + name + suffix`, joined by ". ", where only the name
is the category's positive span.

Prompt file: `<json stem>.prompt.json` or `prompt.json` in the json's folder, all keys optional::

    {"prefix": "a photo of ",                   # before every name
     "suffix": "",                              # after every name
     "names": {"fish": "fish in an aquarium"},  # category name -> text of its positive span
     "categories": {"shark": {"prefix": "", "suffix": ", a big fish"}}}  # per-category override

Categories are named by their json name or its cleaned form; a per-category prefix / suffix
replaces the global one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..utils.io import read_json
from .base import Benchmark, EvalSample
from .coco import COCOEvaluator, check_instances, coco_index

PROMPT_SUFFIX = ".prompt.json"
SHARED_PROMPT = "prompt.json"
SEPARATOR = ". "  # official SEPARATION_TOKENS
_PROMPT_KEYS = {"prefix", "suffix", "names", "categories"}
_SUMMARY_KEYS = ("AP", "AP50")


def _is_prompt_file(path: Path) -> bool:
    return path.name == SHARED_PROMPT or path.name.endswith(PROMPT_SUFFIX)


def _is_instances(data: Any) -> bool:
    return isinstance(data, dict) and all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    )


def find_datasets(root: str | Path, pattern: str = "*.json") -> list[tuple[str, Path, dict[str, Any]]]:
    """(name, json path, parsed json) of every COCO instances json under `root` (recursively,
    sorted by path; `root` may also be one json). name: the path relative to `root` without
    ".json". JSON files that are not instances files (prompt files, other metadata) are skipped;
    a file that does not parse is an error rather than a silently missing dataset."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    if root.is_file():
        candidates, base = [root], root.parent
    else:
        candidates, base = sorted(p for p in root.rglob(pattern) if p.is_file()), root
    found = []
    for path in candidates:
        if _is_prompt_file(path):
            continue
        data = read_json(path, "annotation")
        if _is_instances(data):
            name = path.relative_to(base).with_suffix("").as_posix()
            found.append((name, path, data))
    if not found:
        raise ValueError(f"{root}: no COCO instances json (with images, annotations and categories) found")
    return found


def prompt_file_of(ann_file: Path) -> Path | None:
    """The prompt file of a dataset: `<stem>.prompt.json` before a shared `prompt.json`."""
    for candidate in (ann_file.with_name(ann_file.stem + PROMPT_SUFFIX), ann_file.with_name(SHARED_PROMPT)):
        if candidate.is_file():
            return candidate
    return None


def _text(value: Any, where: str, path: Path) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{path}: {where} must be a string, got {value!r:.60}")  # file content
    return value


def caption_prompt(
    names: Sequence[str], raw_names: Sequence[str], prompt_file: Path
) -> tuple[str, tuple[tuple[tuple[int, int], ...], ...]]:
    """The caption of a prompt file and per category (label k = names[k]) its one positive span
    (start, end) in characters — the name's text only, not its prefix or suffix."""
    spec = read_json(prompt_file, "prompt")
    if not isinstance(spec, dict):
        raise ValueError(  # file content: the CLI reports ValueErrors as one line
            f"{prompt_file}: a prompt file is a JSON object with prefix, suffix, names, categories"
        )
    extra = sorted(set(spec) - _PROMPT_KEYS)
    if extra:
        raise ValueError(f"{prompt_file}: unknown keys {extra} (allowed: {sorted(_PROMPT_KEYS)})")
    prefix = _text(spec.get("prefix", ""), "prefix", prompt_file)
    suffix = _text(spec.get("suffix", ""), "suffix", prompt_file)
    index = {n: k for k, n in enumerate(raw_names)}
    index.update({n: k for k, n in enumerate(names) if n not in index})

    def by_category(key: str) -> dict[int, Any]:
        table = spec.get(key, {})
        if not isinstance(table, dict):
            raise ValueError(f"{prompt_file}: {key} must map category names to values")  # file content
        unknown = sorted(n for n in table if n not in index)
        if unknown:
            raise ValueError(
                f"{prompt_file}: {key}: unknown category names {unknown[:10]} "
                f"(the dataset has {list(names)[:10]}{' ...' if len(names) > 10 else ''})"
            )
        return {index[n]: v for n, v in table.items()}

    replaced = by_category("names")
    wrapped = by_category("categories")
    caption, spans = "", []
    for k, name in enumerate(names):
        text = _text(replaced.get(k, name), f"names[{raw_names[k]!r}]", prompt_file)
        if not text.strip():
            raise ValueError(f"{prompt_file}: names[{raw_names[k]!r}] is empty")
        parts = wrapped.get(k, {})
        if not isinstance(parts, dict) or set(parts) - {"prefix", "suffix"}:
            raise ValueError(
                f'{prompt_file}: categories[{raw_names[k]!r}] must be {{"prefix": ..., "suffix": ...}}'
            )
        if k:
            caption += SEPARATOR
        caption += _text(parts.get("prefix", prefix), f"categories[{raw_names[k]!r}].prefix", prompt_file)
        start = len(caption)
        caption += text
        spans.append(((start, len(caption)),))
        caption += _text(parts.get("suffix", suffix), f"categories[{raw_names[k]!r}].suffix", prompt_file)
    return caption, tuple(spans)


def _image_path(folder: Path, file_name: str) -> Path:
    """`file_name` relative to the json's folder, else in `images/` beside it (the path beside
    the json when neither exists, so that `check_images` names where it looked first)."""
    direct = folder / file_name
    if not direct.is_file() and (folder / "images" / file_name).is_file():
        return folder / "images" / file_name
    return direct


def odinw_benchmark(name: str, ann_file: Path, data: dict[str, Any], distributed: bool = True) -> Benchmark:
    """The benchmark of one dataset (see the module docstring for the prompt)."""
    from ..data.grounding import clean_category_name

    check_instances(ann_file, data)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    if not categories:
        raise ValueError(f"{ann_file}: no categories")
    raw_names = [str(c["name"]) for c in categories]
    names = tuple(clean_category_name(n) for n in raw_names)
    prompt_file = prompt_file_of(ann_file)
    if prompt_file is None:
        prompt: dict[str, Any] = {"classes": names}
    else:
        caption, spans = caption_prompt(names, raw_names, prompt_file)
        prompt = {"caption": caption, "spans": spans}
    samples = []
    for info in data["images"]:
        if "file_name" not in info:
            raise ValueError(f"{ann_file}: image entries need a file_name, got {info!r:.100}")
        samples.append(
            EvalSample(_image_path(ann_file.parent, str(info["file_name"])), int(info["id"]), **prompt)
        )
    evaluator = COCOEvaluator(coco_index(data), [int(c["id"]) for c in categories], distributed=distributed)
    return Benchmark(name, samples, evaluator)


def odinw_benchmarks(root: str | Path, distributed: bool = True, pattern: str = "*.json") -> list[Benchmark]:
    """One benchmark per COCO instances json under `root` (see `find_datasets`). `pattern` is a
    `Path.rglob` glob, matched against the last components of each path relative to `root`, not
    only the file name: '*valid*/*.json' picks the valid split of a tree holding train/valid/test."""
    return [
        odinw_benchmark(name, path, data, distributed) for name, path, data in find_datasets(root, pattern)
    ]


def odinw_summary(per_dataset: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-dataset metrics ({name: {"bbox": {...}}}, as the evaluators return them) -> {"datasets":
    the same tables, "average": {"AP", "AP50"}: the mean over datasets}. A dataset whose figure is
    missing or None (no ground truth) is left out of that mean; with none left the mean is None."""
    average: dict[str, float | None] = {}
    for key in _SUMMARY_KEYS:
        values = [
            float(m["bbox"][key])
            for m in per_dataset.values()
            if isinstance(m, dict) and isinstance(m.get("bbox"), dict) and m["bbox"].get(key) is not None
        ]
        average[key] = sum(values) / len(values) if values else None
    return {"datasets": dict(per_dataset), "average": average}
