"""`glipv2 demo` (what `make demo` runs).

With the shipped weights (`src/glipv2/weights/glipv2_tiny_shapes`, inside the package and so in the
wheel too; trained by `scripts/train_tiny_shapes.sh`) it generates a few ShapesWorld images and runs
`glipv2 predict` on them for all six tasks — detection with the 36 colour+shape names as the class
prompt (one label per box: the names share their colour and shape words) and each box's mask
(instance segmentation), grounding of each image's own caption with masks (referring segmentation),
one question per image (VQA) and a generated caption per image — writing JSON and annotated PNGs under
`demo_out/` and printing what was found next to the ground truth. Then it draws one of the images
through all six tasks as one picture, `demo_out/overview.png` (the README's docs/demo_overview.png is a
copy), and says how to start the web demo. Without the weights folder (a build that left them out)
it runs one forward pass of a preset with random detection weights and summarises the shapes, which
shows what the network computes, not detections.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .modeling import GLIPv2, build_model
from .processing import GLIPv2Processor, grounding_prompt, image_to_tensor, pad_batch
from .processing.postprocess import PostProcessor
from .utils.boxes import xywh_to_xyxy
from .utils.io import DestinationError, atomic_path, check_destination, read_json
from .utils.shipped import DEFAULT_SHIPPED_MODEL, SHIPPED_WEIGHTS_DIR

if TYPE_CHECKING:
    from .inference.detections import Detections

DEMO_CAPTION = "red circle. blue square. green triangle."
DEMO_PHRASES = ("red circle", "blue square", "green triangle")


def demo_image(size: int = 256, seed: int = 0) -> Image.Image:
    """Three coloured shapes on a noisy background (the parity fixture's scene)."""
    background = (np.random.RandomState(seed).rand(size, size, 3) * 60 + 100).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    s = size / 256
    draw.ellipse([20 * s, 30 * s, 100 * s, 110 * s], fill=(220, 30, 30))
    draw.rectangle([140 * s, 40 * s, 220 * s, 120 * s], fill=(30, 30, 220))
    draw.polygon([(60 * s, 230 * s), (120 * s, 140 * s), (180 * s, 230 * s)], fill=(30, 200, 30))
    return image


# the model folder shipped inside the package (src/glipv2/weights/, also in the wheel); a module
# attribute so that tests can point it elsewhere
SHIPPED_WEIGHTS = SHIPPED_WEIGHTS_DIR / DEFAULT_SHIPPED_MODEL
DEMO_THRESHOLD = 0.3
# the last line of every `glipv2 demo`: where to go next (`make serve` from a clone)
WEB_DEMO_HINT = "web demo: glipv2 serve   (or: make serve)"
# the picture of one image through all six tasks (the README shows a copy, docs/demo_overview.png)
OVERVIEW_NAME = "overview.png"


class DemoError(ValueError):
    """A problem with the demo's weights or output folder, or a failed prediction (one line)."""


def run_demo(
    model_name: str = "glipv2_tiny",
    weights: str | Path | None = None,
    out: str | Path = "demo_out",
    num_images: int = 4,
) -> dict[str, object]:
    """The trained demo when weights are given or shipped, else the forward-pass summary of
    `model_name` with random detection weights."""
    if weights is None and (SHIPPED_WEIGHTS / "config.json").is_file():
        weights = SHIPPED_WEIGHTS
    if weights is None:
        return run_random_demo(model_name)
    return run_trained_demo(Path(weights), Path(out), num_images)


def run_trained_demo(weights: Path, out: Path, num_images: int = 4, seed: int = 7) -> dict[str, object]:
    """`glipv2 predict` with `weights` on `num_images` fresh ShapesWorld val images: detection of
    all 36 categories, then grounding of each image's caption. Returns the two JSON documents.
    `weights` and every destination under `out` are checked before any work (`DemoError`)."""
    from .data.shapes_world import generate_shapes_world
    from .inference.command import predict_main as main
    from .loading import local_model_files

    if not (weights / "config.json").is_file():
        raise DemoError(
            f"--weights {weights}: no such model folder (needs config.json and model.safetensors)"
        )
    model_files = local_model_files(str(weights))
    try:
        check_destination(out, what="--out", folder=True)
        check_destination(out / "detection.json", model_files, "--out")
        for name in ("answers.json", "captions.json"):
            check_destination(out / name, model_files, "--out")
        check_destination(out / OVERVIEW_NAME, model_files, "--out")
        for folder in ("detection", "grounding", "vqa", "captions", "shapes"):
            check_destination(out / folder, model_files, "--out", folder=True)
    except DestinationError as err:
        raise DemoError(str(err)) from None
    data = out / "shapes"
    if not (data / "grounding.json").is_file():
        try:
            generate_shapes_world(data, num_images, seed, split="val", progress=False)
        except (ValueError, OSError) as err:  # e.g. a folder of the user's at OUT/shapes
            raise DemoError(f"--out {out}: {err}") from None
    grounding = read_json(data / "grounding.json", "ShapesWorld grounding")
    instances = read_json(data / "instances.json", "ShapesWorld instances")
    names = [c["name"] for c in sorted(instances["categories"], key=lambda c: c["id"])]
    images = [str(data / "images" / entry["file_name"]) for entry in grounding["images"]]

    t0 = time.perf_counter()
    detection_json = out / "detection.json"
    if (
        main(
            [
                "predict",
                "--quiet",
                *images,
                "--model",
                str(weights),
                "--classes",
                ",".join(names),
                "--threshold",
                str(DEMO_THRESHOLD),
                "--one-label-per-box",
                "--out",
                str(detection_json),
                "--viz",
                str(out / "detection"),
            ]
        )
        != 0
    ):
        raise DemoError("the detection run failed; see the message above")
    grounded: list[dict[str, object]] = []
    for image, entry in zip(images, grounding["images"]):
        result = out / "grounding" / f"{Path(image).stem}.json"
        phrases = list(dict.fromkeys(p["text"] for p in entry["phrases"]))
        if (
            main(
                [
                    "predict",
                    "--quiet",
                    image,
                    "--model",
                    str(weights),
                    "--caption",
                    entry["caption"],
                    "--phrases",
                    *phrases,
                    "--threshold",
                    str(DEMO_THRESHOLD),
                    "--out",
                    str(result),
                    "--viz",
                    str(out / "grounding"),
                ]
            )
            != 0
        ):
            raise DemoError("a grounding run failed; see the message above")
        grounded.append(read_json(result, "predictions"))
    answers, captions = _understanding(weights, data, images, grounding["images"], out)
    seconds = time.perf_counter() - t0

    detections = read_json(detection_json, "predictions")
    truth: dict[int, Counter[str]] = {}
    by_id = {c["id"]: c["name"] for c in instances["categories"]}
    for ann in instances["annotations"]:
        truth.setdefault(ann["image_id"], Counter())[by_id[ann["category_id"]]] += 1
    tasks = "detection, grounding" + (", VQA" if answers else "") + (", captioning" if captions else "")
    print(
        f"{weights}: {tasks} on {len(images)} ShapesWorld images in {seconds:.1f} s (scores >= {DEMO_THRESHOLD})"
    )
    for index, (entry, info, ground) in enumerate(zip(detections["images"], grounding["images"], grounded)):
        found = Counter(d["label"] for d in entry.get("detections", []))
        print(f"\n{Path(entry['file']).name}  caption: {info['caption']!r}")
        print(f"  ground truth: {_counts(truth.get(info['id'], Counter()))}")
        print(f"  detected:     {_counts(found)}")
        best: dict[str, float] = {}
        for d in ground["images"][0].get("detections", []):
            best.setdefault(d["label"], d["score"])
        print("  grounded:     " + (", ".join(f"{p!r} {s:.2f}" for p, s in best.items()) or "nothing"))
        if index in answers:
            question, truth_answer, result = answers[index]
            got = result.get("answers", [{"answer": "(failed)", "score": 0.0}])[0]
            print(
                f"  asked:        {question!r} -> {got['answer']!r} {got['score']:.2f} (truth {truth_answer!r})"
            )
        if captions:
            print(f"  generated:    {captions['images'][index].get('generated_caption', '(failed)')!r}")
    folders = [f"{out / 'detection'}/", f"{out / 'grounding'}/"]
    folders += [f"{out / 'vqa'}/"] if answers else []
    folders += [f"{out / 'captions'}/"] if captions else []
    print(f"\nJSON and annotated PNGs: {detection_json}, {', '.join(folders)}")
    pick = _overview_image(detections, grounding["images"], truth)
    panels = _write_overview(
        out / OVERVIEW_NAME,
        weights,
        images[pick],
        grounding["images"][pick],
        detections,
        grounded[pick],
        answers.get(pick),
        captions["images"][pick] if captions else None,
        _reference_caption(data, grounding["images"][pick]["id"]),
        truth.get(grounding["images"][pick]["id"], Counter()),
        {ann["id"]: ann["bbox"] for ann in instances["annotations"]},
    )
    print(f"all six tasks on {Path(images[pick]).name} in one picture: {out / OVERVIEW_NAME}")
    print(WEB_DEMO_HINT)
    return {
        "detection": detections,
        "grounding": grounded,
        "answers": [a[2] for a in answers.values()],
        "captions": captions,
        "overview": {"file": out / OVERVIEW_NAME, "image": Path(images[pick]).name, "panels": panels},
    }


# the question types the demo asks, one per image in turn
DEMO_QUESTION_TYPES = ("count", "colour", "relative position", "existence", "shape", "size")


def _understanding(
    weights: Path, data: Path, images: list[str], infos: list[dict], out: Path
) -> tuple[dict[int, tuple[str, str, dict]], dict | None]:
    """One question per image (`glipv2 predict --question`) and a caption for every image
    (`--describe`), when the model has those heads: ({image index: (question, true answer, result
    entry)}, captions document or None)."""
    from .inference.command import predict_main as main

    config = read_json(weights / "config.json", "model config")
    answers: dict[int, tuple[str, str, dict]] = {}
    if config.get("vqa_answers") and (data / "vqa_questions.json").is_file():
        questions = read_json(data / "vqa_questions.json", "VQA questions")["questions"]
        truth = {
            a["question_id"]: a
            for a in read_json(data / "vqa_annotations.json", "VQA annotations")["annotations"]
        }
        for index, (image, info) in enumerate(zip(images, infos)):
            mine = [q for q in questions if q["image_id"] == info["id"]]
            wanted = DEMO_QUESTION_TYPES[index % len(DEMO_QUESTION_TYPES)]
            typed = [q for q in mine if truth[q["question_id"]]["question_type"] == wanted] or mine
            if not typed:
                continue
            q = typed[0]
            result = out / "vqa" / f"{Path(image).stem}.json"
            args = [
                "predict",
                "--quiet",
                image,
                "--model",
                str(weights),
                "--question",
                q["question"],
                "--top-k",
                "3",
            ]
            if main([*args, "--out", str(result), "--viz", str(out / "vqa")]) != 0:
                raise DemoError("a VQA run failed; see the message above")
            entry = read_json(result, "answers")["images"][0]
            answers[index] = (q["question"], truth[q["question_id"]]["multiple_choice_answer"], entry)
    captions = None
    if config.get("caption_head"):
        result = out / "captions.json"
        if (
            main(
                [
                    "predict",
                    "--quiet",
                    *images,
                    "--model",
                    str(weights),
                    "--describe",
                    "--out",
                    str(result),
                    "--viz",
                    str(out / "captions"),
                ]
            )
            != 0
        ):
            raise DemoError("the captioning run failed; see the message above")
        captions = read_json(result, "captions")
    return answers, captions


# --- the overview picture ----------------------------------------------------------------------
# Three columns of 360 px panels (1,164 px with the margins): the width the README shows it at. The
# box tags of `draw_detections` use PIL's 10 px default font, which would read at ~9 px there, so the
# annotations are drawn on the image shrunk by LABEL_ZOOM and the drawing is then enlarged by it: the
# tags come out at ~14 px, at the cost of a slightly softer image (flat shapes: it does not show).
OVERVIEW_COLUMNS = 3
OVERVIEW_PANEL = 360
OVERVIEW_MARGIN = 12
LABEL_ZOOM = 1.4
# stronger than draw_detections' 0.45: the masks are what the segmentation panels are about
MASK_OPACITY = 0.7
TITLE_PX, TEXT_PX = 20, 15


def _overview_image(detections: dict, infos: list[dict], truth: dict[int, Counter[str]]) -> int:
    """The demo image the overview shows: the one whose detected names agree best with its ground
    truth (matched objects / the larger of the two counts; ties go to more objects, then the earlier
    image), so the picture shows the model where it works. Its panels print the truth beside every
    answer, so they do not hide the misses."""

    def agreement(index: int) -> tuple[float, int, int]:
        found = Counter(d["label"] for d in detections["images"][index].get("detections", []))
        wanted = truth.get(infos[index]["id"], Counter())
        matched = sum((found & wanted).values())
        return matched / max(1, found.total(), wanted.total()), wanted.total(), -index

    return max(range(len(infos)), key=agreement)


def _reference_caption(data: Path, image_id: int) -> str | None:
    """The first of the image's five reference captions (ShapesWorld's COCO-style captions.json)."""
    if not (data / "captions.json").is_file():
        return None
    for ann in read_json(data / "captions.json", "ShapesWorld captions")["annotations"]:
        if ann["image_id"] == image_id:
            return str(ann["caption"])
    return None


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in font at `size` px (Pillow >= 10.1 with FreeType), else its fixed 10 px one."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def _fit(size: tuple[int, int]) -> float:
    """The scale that fits an image of `size` (width, height) into a square panel."""
    return min(OVERVIEW_PANEL / size[0], OVERVIEW_PANEL / size[1])


def _plain(image: Image.Image) -> Image.Image:
    scale = _fit(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def _annotated(image: Image.Image, found: Detections, mask_opacity: float = MASK_OPACITY) -> Image.Image:
    """`draw_detections` at panel size, with tags LABEL_ZOOM times larger (see LABEL_ZOOM)."""
    from .inference.visualize import draw_detections

    scale = _fit(image.size) / LABEL_ZOOM
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    sx, sy = size[0] / image.width, size[1] / image.height
    masks = found.masks
    if masks is not None and len(found):
        masks = torch.nn.functional.interpolate(
            masks[:, None].float(), size=(size[1], size[0]), mode="nearest"
        )
        masks = masks[:, 0] > 0.5
    small = replace(
        found,
        boxes=found.boxes * torch.tensor([sx, sy, sx, sy]),
        masks=masks,
        image_size=(size[1], size[0]),
    )
    drawn = draw_detections(image.resize(size, Image.Resampling.LANCZOS), small, mask_opacity=mask_opacity)
    return drawn.resize((round(size[0] * LABEL_ZOOM), round(size[1] * LABEL_ZOOM)), Image.Resampling.LANCZOS)


def _from_json(entry: dict, names: list[str]) -> Detections:
    """The `Detections` of one image entry of a `glipv2 predict` document (masks from `mask_rle`)."""
    from .inference.detections import Detections

    found = entry.get("detections", [])
    masks = None
    if found and all("mask_rle" in d for d in found):
        from pycocotools import mask as mask_utils

        rles = [{"size": d["mask_rle"]["size"], "counts": d["mask_rle"]["counts"].encode()} for d in found]
        masks = torch.from_numpy(np.stack([mask_utils.decode(r) for r in rles]).astype(bool))
    return Detections(
        torch.tensor([d["box_xyxy"] for d in found], dtype=torch.float32).reshape(-1, 4),
        torch.tensor([d["score"] for d in found], dtype=torch.float32),
        torch.tensor([d["label_index"] for d in found], dtype=torch.long),
        list(names),
        (int(entry["height"]), int(entry["width"])),
        str(entry.get("prompt", "")),
        masks,
    )


def _best_per_label(found: Detections) -> Detections:
    """Each label's best detection (the grounding panel: one box per phrase, as recall@1 scores it)."""
    keep: dict[int, int] = {}
    for i in found.scores.argsort(descending=True).tolist():
        keep.setdefault(int(found.labels[i]), i)
    return found[torch.tensor(sorted(keep.values()), dtype=torch.long)]


def _box_iou(box: list[float], xywh: list[float]) -> float:
    """IoU of an xyxy box with a COCO xywh annotation box."""
    from torchvision.ops import box_iou

    return float(box_iou(torch.tensor([box]), xywh_to_xyxy(torch.tensor([xywh], dtype=torch.float32)))[0, 0])


def _quoted(text: str) -> str:
    return f"\u201c{text}\u201d"


def _write_overview(
    path: Path,
    weights: Path,
    image_file: str,
    info: dict,
    detections: dict,
    grounded: dict,
    answer: tuple[str, str, dict] | None,
    caption: dict | None,
    reference: str | None,
    truth: Counter[str],
    true_boxes: dict[int, list[float]],
) -> list[dict[str, object]]:
    """One image through the six tasks, as a grid of labelled panels: detection and instance
    segmentation (the demo's detection run, boxes and masks), grounding of the image's caption (its
    run, the best box per phrase), referring segmentation of the image's first referring expression
    (run here: the best box and its mask), the question asked and its answer, the generated caption.
    `true_boxes`: the xywh box of every annotation id, to say which phrases landed on their objects.
    Returns what the panels say: [{"task": title, "text": [the lines above and below the image]}]."""
    from .inference.predictor import Predictor
    from .loading import load_model

    with Image.open(image_file) as opened:
        image = opened.convert("RGB")
    index = [Path(e["file"]).name for e in detections["images"]].index(Path(image_file).name)
    found = _from_json(detections["images"][index], detections["labels"])
    has_masks = bool(read_json(weights / "config.json", "model config").get("mask_head"))
    no_masks = [] if has_masks else ["(this model has no mask head)"]
    nothing = [f"nothing found at scores >= {DEMO_THRESHOLD}"] if len(found) == 0 else []
    phrases = _best_per_label(_from_json(grounded["images"][0], grounded["labels"]))
    objects = {name: [] for name in grounded["labels"]}  # phrase -> the xywh boxes it names
    for phrase in info["phrases"]:
        objects.setdefault(phrase["text"], []).extend(true_boxes[a] for a in phrase["ann_ids"])
    # two phrases whose best box is the same draw one tag over the other: say per phrase where it went
    outcomes = []
    for box, score, label in zip(phrases.boxes.tolist(), phrases.scores.tolist(), phrases.labels.tolist()):
        name = phrases.names[label]
        hit = any(_box_iou(box, true) >= 0.5 for true in objects[name])
        outcomes.append(f"{_quoted(name)} {score:.2f}: {'on its object' if hit else 'missed'}")
    panels: list[tuple[str, list[str], Image.Image, list[str]]] = [
        (
            "detection",
            [f"prompt: the {len(detections['labels'])} colour + shape names; scores >= {DEMO_THRESHOLD}"],
            _annotated(image, replace(found, masks=None)),
            [*nothing, f"truth: {_counts(truth, times='x')}"],  # PIL's built-in font has no ×
        ),
        (
            "instance segmentation",
            ["the same class prompt, one mask per box"],
            _annotated(image, found),
            [*nothing, *no_masks],
        ),
        (
            "phrase grounding",
            [f"caption: {_quoted(info['caption'])}"],
            _annotated(image, replace(phrases, masks=None)),
            [
                "the best box of each phrase (on its object: IoU >= 0.5)",
                *(outcomes or [f"nothing found at scores >= {DEMO_THRESHOLD}"]),
            ],
        ),
    ]
    if info.get("refexps"):
        ref = info["refexps"][0]
        predictor = Predictor(load_model(str(weights)))
        referred = predictor.ground(image, ref["expression"], phrases=[ref["expression"]], threshold=0.0)
        best = referred[torch.arange(min(1, len(referred)))]
        notes = [
            f"IoU with the object meant: {_box_iou(best.boxes[0].tolist(), ref['bbox']):.2f}"
            if len(best)
            else "nothing found"
        ]
        notes += no_masks
        panels.append(
            (
                "referring segmentation",
                [f"expression: {_quoted(ref['expression'])}"],
                _annotated(image, best),
                notes,
            )
        )
    else:
        panels.append(
            ("referring segmentation", ["(no referring expression for this image)"], _plain(image), [])
        )
    if answer is not None:
        question, true_answer, result = answer
        got = result.get("answers", [{"answer": "(failed)", "score": 0.0}])[0]
        notes = [f"answer: {_quoted(got['answer'])} {got['score']:.2f}   (truth: {_quoted(true_answer)})"]
        panels.append(("visual question answering", [f"question: {_quoted(question)}"], _plain(image), notes))
    else:
        panels.append(("visual question answering", ["(this model has no VQA head)"], _plain(image), []))
    if caption is not None:
        notes = [f"generated: {_quoted(caption.get('generated_caption', '(failed)'))}"]
        notes += [f"a reference: {_quoted(reference)}"] if reference else []
        panels.append(
            ("captioning", ["prompt: none (the caption is written token by token)"], _plain(image), notes)
        )
    else:
        panels.append(("captioning", ["(this model has no caption head)"], _plain(image), []))
    heading = f"glipv2 demo: one ShapesWorld image, six tasks, one model ({weights.name})"
    picture = _grid(panels, heading)
    with atomic_path(path) as tmp:  # an interruption never leaves half a PNG
        picture.save(tmp, format="PNG")
    return [{"task": title, "text": [*above, *below]} for title, above, _, below in panels]


def _grid(panels: list[tuple[str, list[str], Image.Image, list[str]]], heading: str) -> Image.Image:
    """The panels (title, lines above the image, image, lines below) in OVERVIEW_COLUMNS columns,
    images of a row top-aligned, under `heading`."""
    from .inference.visualize import wrap_text

    title_font, text_font = _font(TITLE_PX), _font(TEXT_PX)
    line = TEXT_PX + 5
    inner = OVERVIEW_PANEL
    width = OVERVIEW_COLUMNS * (inner + 2 * OVERVIEW_MARGIN) + OVERVIEW_MARGIN
    rows = [panels[i : i + OVERVIEW_COLUMNS] for i in range(0, len(panels), OVERVIEW_COLUMNS)]

    def wrap(texts: list[str]) -> list[str]:
        return [piece for text in texts for piece in wrap_text(text, text_font, inner)]

    wrapped = [[(wrap(above), wrap(below)) for _, above, _, below in row] for row in rows]
    heading_h = TITLE_PX + 2 * OVERVIEW_MARGIN
    # per row: (top, height of the title and lines above the images, image height, of the lines below)
    layout = []
    top = heading_h
    for row, texts in zip(rows, wrapped):
        above_h = TITLE_PX + 8 + line * max(len(a) for a, _ in texts)
        image_h = max(p[2].height for p in row)
        below_h = line * max(len(b) for _, b in texts)
        layout.append((top, above_h, image_h, below_h))
        top += above_h + image_h + below_h + 3 * OVERVIEW_MARGIN
    canvas = Image.new("RGB", (width, top), (232, 232, 232))
    draw = ImageDraw.Draw(canvas)
    draw.text((OVERVIEW_MARGIN, OVERVIEW_MARGIN), heading, fill=(20, 20, 20), font=title_font)
    for row, texts, (top, above_h, image_h, below_h) in zip(rows, wrapped, layout):
        for column, ((title, _, picture, _), (above, below)) in enumerate(zip(row, texts)):
            left = OVERVIEW_MARGIN + column * (inner + 2 * OVERVIEW_MARGIN)
            bottom = top + above_h + image_h + below_h + 2 * OVERVIEW_MARGIN
            draw.rectangle([left, top, left + inner + OVERVIEW_MARGIN, bottom], fill=(255, 255, 255))
            x, y = left + OVERVIEW_MARGIN // 2, top + OVERVIEW_MARGIN // 2
            draw.text((x, y), title, fill=(20, 20, 20), font=title_font)
            for k, text in enumerate(above):
                draw.text((x, y + TITLE_PX + 6 + k * line), text, fill=(90, 90, 90), font=text_font)
            canvas.paste(picture, (x + (inner - picture.width) // 2, y + above_h))
            for k, text in enumerate(below):
                draw.text((x, y + above_h + image_h + 4 + k * line), text, fill=(20, 20, 20), font=text_font)
    return canvas


def _counts(counter: Counter[str], times: str = "×") -> str:
    return (
        ", ".join(f"{n}{times} {name}" if n > 1 else name for name, n in sorted(counter.items())) or "nothing"
    )


def run_random_demo(model_name: str = "glipv2_tiny") -> dict[str, object]:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model: GLIPv2 = build_model(model_name).eval()
    build_s = time.perf_counter() - t0
    pixel_values, image_sizes = pad_batch([image_to_tensor(demo_image())], model.config.size_divisibility)
    prompt = grounding_prompt(DEMO_CAPTION, phrases=list(DEMO_PHRASES))
    text = GLIPv2Processor.from_config(model.config).tokenize(prompt.text)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(pixel_values, text.input_ids, text.attention_mask, image_sizes)
    forward_s = time.perf_counter() - t0

    print(f"model {model_name}: {model.num_parameters() / 1e6:.2f} M parameters (built in {build_s:.1f} s)")
    print(
        f"input {tuple(pixel_values.shape)}, prompt {DEMO_CAPTION!r} -> {text.input_ids.shape[1]} token slots"
    )
    print(f"forward pass: {forward_s:.2f} s")
    for level, (s, a) in enumerate(zip(out.logits, out.anchors)):
        print(f"  P{level + 3}: region-word logits {tuple(s.shape)}, anchors {tuple(a.shape)}")
    print(f"  P̊ {tuple(out.token_features.shape)} -> P {tuple(out.fused_token_features.shape)}")

    # the official post-processing of this same output (no resize: boxes are in image pixels);
    # detections come best first, so each phrase's first one is its best
    [detections] = PostProcessor(inference_threshold=0.0)(
        out, [prompt.positive_map(text.offsets[0], text.attention_mask[0])]
    )
    summary: dict[str, object] = {}
    for index, phrase in enumerate(DEMO_PHRASES):
        mine = detections.select(detections.labels == index)
        if len(mine) == 0:
            continue
        box, score = mine.boxes[0].tolist(), float(mine.scores[0])
        summary[phrase] = {"score": score, "box": box}
        print(f"  {phrase!r}: best score {score:.3f} at box [{', '.join(f'{v:.0f}' for v in box)}]")
    print(
        "note: the detection head is randomly initialised until trained weights ship; "
        "scores above are not detections."
    )
    print(WEB_DEMO_HINT)
    return summary
