"""Score the multi-task tiny model (and, optionally, its detection-only twin) on fresh ShapesWorld
`val` (seed 101) and `heldout` (seed 102) splits: everything the README's ShapesWorld table reports.

    .venv/bin/python scripts/eval_tiny_shapes.py [--model DIR]
        [--baseline runs/glipv2_tiny_shapes/detection/model] [--train-captions FILE] [--out DIR]

DIR defaults to the shipped model folder, src/glipv2/weights/glipv2_tiny_shapes.

Per split: box AP / AP50 (official protocol and `--one-label-per-box`), mask AP, referring-expression
P@1; on `val` also VQA accuracy per question type beside a question-only baseline (the same model
with each image replaced by a blank one of its size), CIDEr-D / BLEU-4 beside the best constant
caption, and per image the recall and precision of the ground truth's colour-shape names in the
generated caption. Writes `report.json` and prints the tables. Every figure comes from the `glipv2`
commands or evaluators run here.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from glipv2.cli import main as glipv2
from glipv2.data.shapes_world import COLOURS, SHAPES, generate_shapes_world, plural
from glipv2.utils.shipped import DEFAULT_SHIPPED_MODEL, SHIPPED_WEIGHTS_DIR

SPLITS = {"val": 101, "heldout": 102}
NUM_IMAGES = 200
# question types whose answer depends on the image (the existence and count answers do too)
IMAGE_TYPES = ("count", "colour", "shape", "size", "existence", "relative position")


def run(*argv: str) -> None:
    code = glipv2(list(argv))
    if code != 0:
        raise SystemExit(f"glipv2 {' '.join(argv)}: exit {code}")


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def refexp_json(grounding: Path, out: Path) -> Path:
    """ShapesWorld's referring expressions as an MDETR-style refexp json (one entry per expression)."""
    data = read(grounding)
    images, annotations = [], []
    for info in data["images"]:
        for ref in info["refexps"]:
            entry = len(images) + 1
            images.append(
                {
                    "id": entry,
                    "file_name": info["file_name"],
                    "caption": ref["expression"],
                    "width": info["width"],
                    "height": info["height"],
                }
            )
            annotations.append({"id": entry, "image_id": entry, "bbox": ref["bbox"], "category_id": 1})
    out.write_text(
        json.dumps(
            {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
        )
    )
    return out


def blank_images(source: Path, out: Path) -> Path:
    """The same file names, each a uniform grey image of its size: the question-only baseline."""
    out.mkdir(parents=True, exist_ok=True)
    for file in sorted(source.iterdir()):
        target = out / file.name
        if not target.exists():
            with Image.open(file) as image:
                Image.new("RGB", image.size, (128, 128, 128)).save(target)
    return out


_NAME = re.compile(
    r"\b("
    + "|".join(COLOURS)
    + r")\s+("
    + "|".join(sorted({*SHAPES, *(plural(s) for s in SHAPES)}, key=len, reverse=True))
    + r")\b"
)
_SINGULAR = {plural(s): s for s in SHAPES} | {s: s for s in SHAPES}


def colour_shape_names(text: str) -> set[tuple[str, str]]:
    return {(c, _SINGULAR[s]) for c, s in _NAME.findall(text.lower())}


def name_recall_precision(instances: Path, predictions: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over images of the recall and precision of the ground truth's colour-shape pairs among the
    pairs a generated caption names (precision 0 for a caption naming none)."""
    truth: dict[int, set[tuple[str, str]]] = {}
    for ann in read(instances)["annotations"]:
        truth.setdefault(ann["image_id"], set()).add((ann["colour"], ann["shape"]))
    recalls, precisions = [], []
    for p in predictions:
        gt, named = truth.get(p["image_id"], set()), colour_shape_names(p["caption"])
        recalls.append(len(gt & named) / len(gt) if gt else 1.0)
        precisions.append(len(gt & named) / len(named) if named else 0.0)
    return {"recall": sum(recalls) / len(recalls), "precision": sum(precisions) / len(precisions)}


def best_constant_caption(train_captions: Path, val_captions: Path, candidates: int) -> dict[str, Any]:
    """The training caption that, given for every `val` image, scores the highest CIDEr-D — among the
    `candidates` most frequent training captions (scoring every distinct one is hours of pure-Python
    CIDEr); its CIDEr-D and BLEU-4 come from the same evaluator as the model's."""
    from pycocoevalcap.cider.cider import Cider

    from glipv2.evaluation.caption import CaptionEvaluator, load_caption_references, ptb_tokenize

    counts = Counter(a["caption"] for a in read(train_captions)["annotations"])
    pool = [c for c, _ in counts.most_common(candidates)]
    references = load_caption_references(val_captions)
    tokenised = ptb_tokenize(
        {**{("ref", k): v for k, v in references.items()}, **{("cand", i): [c] for i, c in enumerate(pool)}}
    )
    refs = {k: tokenised[("ref", k)] for k in references}
    best, best_score = pool[0], -1.0
    for i, _ in enumerate(pool):
        hyp = {k: [tokenised[("cand", i)][0]] for k in references}
        score, _ = Cider().compute_score(refs, hyp)
        if score > best_score:
            best, best_score = pool[i], score
    evaluator = CaptionEvaluator(references)
    evaluator.process([{"image_id": k, "caption": best} for k in references])
    return {"caption": best, "candidates": len(pool), **evaluator.evaluate()["caption"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED_WEIGHTS_DIR / DEFAULT_SHIPPED_MODEL))
    parser.add_argument("--baseline", help="a detection-only model folder to compare box AP50 with")
    parser.add_argument("--train-captions", help="the training split's captions.json (best constant caption)")
    parser.add_argument("--constant-candidates", type=int, default=300)
    parser.add_argument("--out", default="runs/glipv2_tiny_shapes/eval")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model": args.model, "seeds": SPLITS, "images": NUM_IMAGES}
    models = {"multitask": args.model} | ({"detection_only": args.baseline} if args.baseline else {})
    for split, seed in SPLITS.items():
        data = out / split
        if not (data / "instances.json").is_file():
            generate_shapes_world(data, NUM_IMAGES, seed, split=split, progress=False)
        images = data / "images"
        row: dict[str, Any] = {}
        for name, model in models.items():
            for protocol, extra in (("official", []), ("one_label_per_box", ["--one-label-per-box"])):
                metrics = out / f"{split}_{name}_coco_{protocol}.json"
                run(
                    "eval",
                    "coco",
                    "--model",
                    model,
                    "--ann",
                    str(data / "instances.json"),
                    "--images",
                    str(images),
                    "--out",
                    str(metrics),
                    "--no-progress",
                    *extra,
                )
                row[f"{name}/{protocol}"] = read(metrics)
        refexp = refexp_json(data / "grounding.json", out / f"{split}_refexp.json")
        metrics = out / f"{split}_refexp_metrics.json"
        run(
            "eval",
            "refcoco",
            "--model",
            args.model,
            "--ann",
            str(refexp),
            "--images",
            str(images),
            "--out",
            str(metrics),
            "--no-progress",
        )
        row["refexp"] = read(metrics)
        if split == "val":
            for name, folder in (
                ("model", images),
                ("blank_image_baseline", blank_images(images, out / "val_blank")),
            ):
                metrics = out / f"val_vqa_{name}.json"
                run(
                    "eval",
                    "vqa",
                    "--model",
                    args.model,
                    "--questions",
                    str(data / "vqa_questions.json"),
                    "--ann",
                    str(data / "vqa_annotations.json"),
                    "--images",
                    str(folder),
                    "--out",
                    str(metrics),
                    "--batch-size",
                    "8",
                    "--no-progress",
                )
                row[f"vqa/{name}"] = read(metrics)
            metrics = out / "val_caption.json"
            run(
                "eval",
                "caption",
                "--model",
                args.model,
                "--ann",
                str(data / "captions.json"),
                "--images",
                str(images),
                "--out",
                str(metrics),
                "--batch-size",
                "8",
                "--no-progress",
            )
            row["caption/model"] = read(metrics)
            predictions = read(metrics.with_name(metrics.stem + "_predictions.json"))
            row["caption/names"] = name_recall_precision(data / "instances.json", predictions)
            if args.train_captions:
                row["caption/best_constant"] = best_constant_caption(
                    Path(args.train_captions), data / "captions.json", args.constant_candidates
                )
        report[split] = row
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary(report), indent=1))
    return 0


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of `report` (the README's table)."""
    out: dict[str, Any] = {}
    for split in SPLITS:
        row = report[split]
        for key, metrics in row.items():
            if "/official" in key or "/one_label_per_box" in key:
                bbox = metrics.get("bbox", {})
                out[f"{split} {key} AP / AP50"] = (round(bbox.get("AP", 0), 3), round(bbox.get("AP50", 0), 3))
                if "segm" in metrics:
                    out[f"{split} {key} mask AP"] = round(metrics["segm"]["AP"], 3)
        out[f"{split} refexp P@1"] = round(row["refexp"]["refexp"]["P@1"], 3)
        if "vqa/model" in row:
            model, blank = row["vqa/model"]["vqa"], row["vqa/blank_image_baseline"]["vqa"]
            out["val vqa accuracy (model / blank image)"] = (
                round(model["accuracy"], 3),
                round(blank["accuracy"], 3),
            )
            for t in sorted(model["per_type"]):
                out[f"val vqa {t}"] = (round(model["per_type"][t], 3), round(blank["per_type"].get(t, 0), 3))
            cap = row["caption/model"]["caption"]
            out["val caption CIDEr-D / BLEU-4"] = (round(cap["CIDEr"], 3), round(cap["BLEU-4"], 3))
            out["val caption name recall / precision"] = tuple(
                round(v, 3) for v in row["caption/names"].values()
            )
            if "caption/best_constant" in row:
                c = row["caption/best_constant"]
                out["val best constant caption CIDEr-D / BLEU-4"] = (
                    round(c["CIDEr"], 3),
                    round(c["BLEU-4"], 3),
                    c["caption"],
                )
    return out


if __name__ == "__main__":
    sys.exit(main())
