"""`glipv2 demo` (what `make demo` runs).

With the shipped weights (`weights/glipv2_tiny_shapes`, trained by `scripts/train_tiny_shapes.sh`)
it generates a few ShapesWorld images and runs `glipv2 predict` on them for all six tasks — detection
with the 36 colour+shape names as the class prompt (one label per box: the names share their colour
and shape words) and each box's mask (instance segmentation), grounding of each image's own caption
with masks (referring segmentation), one question per image (VQA) and a generated caption per image —
writing JSON and annotated PNGs under `demo_out/` and printing what was found next to the ground truth.
Without them (e.g. a non-editable install), it runs one forward pass of a preset with random
detection weights and summarises the shapes, which shows what the network computes, not detections.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .modeling import GLIPv2, build_model
from .processing import GLIPv2Processor, grounding_prompt, image_to_tensor, pad_batch
from .processing.postprocess import PostProcessor
from .utils.io import DestinationError, check_destination, read_json

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


# the repository's weights folder (src/glipv2/demo.py -> repository root)
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "glipv2_tiny_shapes"
DEMO_THRESHOLD = 0.3


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
    return {
        "detection": detections,
        "grounding": grounded,
        "answers": [a[2] for a in answers.values()],
        "captions": captions,
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
            args = ["predict", image, "--model", str(weights), "--question", q["question"], "--top-k", "3"]
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


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n}× {name}" if n > 1 else name for name, n in sorted(counter.items())) or "nothing"


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
    return summary
