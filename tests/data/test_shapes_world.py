"""ShapesWorld: determinism, the split rule, masks, and that every sentence is true of its image.

The language checks parse the written text back with their own small grammar and resolve it against
the boxes in instances.json using the geometry documented in `glipv2.data.shapes_world`, rather than
calling the generator's own helpers, so a generator bug cannot vouch for itself.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from glipv2.data import (
    CATEGORIES,
    COLOUR_RGB,
    COLOURS,
    HELDOUT_PAIRS,
    SHAPES,
    SIZES,
    generate_shapes_world,
    get_categories,
    make_example,
    render_scene,
)
from glipv2.data.command import main
from glipv2.data.shapes_world import MIN_VISIBLE_FRACTION, POSITION_MARGIN

pycocotools = pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402 (after the importorskip)
from pycocotools.coco import COCO  # noqa: E402

# pycocotools 2.0.x calls np.array(copy=False) internally under numpy 2; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

JSON_FILES = (
    "instances.json",
    "grounding.json",
    "vqa_questions.json",
    "vqa_annotations.json",
    "captions.json",
)
PLURALS = {
    "circles": "circle",
    "squares": "square",
    "triangles": "triangle",
    "stars": "star",
    "hexagons": "hexagon",
    "crosses": "cross",
    "objects": "object",
}
PLURALS_INV = {v: k for k, v in PLURALS.items()}
NUMBERS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
}
RELATION_WORDS = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}
HELDOUT_NAMES = [f"{c} {s}" for c, s in HELDOUT_PAIRS]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small dataset per split, shared by the tests of this module (~2 s in all)."""
    root = tmp_path_factory.mktemp("shapes_world")
    sizes = {"train": 40, "val": 12, "heldout": 12}
    for split, n in sizes.items():
        summary = generate_shapes_world(root / split, n, seed=7, split=split)
        assert summary["num_images"] == n and summary["split"] == split
    return {split: root / split for split in sizes}


def load(directory: Path, name: str) -> Any:
    return json.loads((directory / name).read_text())


def instances_by_image(directory: Path) -> tuple[dict[int, dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    doc = load(directory, "instances.json")
    images = {im["id"]: im for im in doc["images"]}
    anns: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
    for ann in doc["annotations"]:
        anns[ann["image_id"]].append(ann)
    return images, anns


# ------------------------------------------------------------------ the grammar and geometry, re-derived

Desc = tuple[str | None, str | None, str | None]


def parse_descriptor(words: str) -> Desc:
    """ "small red circle" -> ("small", "red", "circle"); "red object" -> (None, "red", None); plurals too."""
    tokens = words.split(" ")
    noun = PLURALS.get(tokens[-1], tokens[-1])
    assert noun in (*SHAPES, "object"), words
    rest = tokens[:-1]
    size = rest.pop(0) if rest and rest[0] in SIZES else None
    colour = rest.pop(0) if rest and rest[0] in COLOURS else None
    assert not rest, f"unexpected words in {words!r}"
    return size, colour, None if noun == "object" else noun


def fits(ann: dict[str, Any], desc: Desc) -> bool:
    return all(v is None or ann[k] == v for k, v in zip(("size", "colour", "shape"), desc))


def centre(ann: dict[str, Any]) -> tuple[float, float]:
    x, y, w, h = ann["bbox"]
    return x + w / 2, y + h / 2


def strictly(rel: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    ax, ay, aw, ah = a["bbox"]
    bx, by, bw, bh = b["bbox"]
    return {"left": ax + aw <= bx, "right": ax >= bx + bw, "above": ay + ah <= by, "below": ay >= by + bh}[
        rel
    ]


def clearly_not(rel: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    (ax, ay), (bx, by) = centre(a), centre(b)
    return {"left": ax >= bx, "right": ax <= bx, "above": ay >= by, "below": ay <= by}[rel]


def extreme(
    direction: str, target: dict[str, Any], others: list[dict[str, Any]], image: dict[str, Any]
) -> bool:
    axis = 0 if direction in ("leftmost", "rightmost") else 1
    sign = 1 if direction in ("leftmost", "topmost") else -1
    margin = POSITION_MARGIN * (image["width"] if axis == 0 else image["height"])
    return all(sign * (centre(o)[axis] - centre(target)[axis]) >= margin for o in others)


def resolve(expression: str, anns: list[dict[str, Any]], image: dict[str, Any]) -> list[int]:
    """The ids of every object the expression could mean to a reader (one, when it is unambiguous)."""
    m = re.fullmatch(r"the (.+?) (to the left of|to the right of|above|below) the (.+)", expression)
    if m:
        landmarks = [a for a in anns if fits(a, parse_descriptor(m[3]))]
        assert len(landmarks) == 1, f"landmark of {expression!r} is ambiguous"
        lm, rel = landmarks[0], RELATION_WORDS[m[2]]
        candidates = [a for a in anns if a is not lm and fits(a, parse_descriptor(m[1]))]
        # a candidate neither strictly related nor clearly not is fuzzy: it counts as a possible reading
        return [a["id"] for a in candidates if not clearly_not(rel, a, lm)]
    m = re.fullmatch(r"the (leftmost|rightmost|topmost|bottommost) (.+)", expression)
    if m:
        candidates = [a for a in anns if fits(a, parse_descriptor(m[2]))]
        assert len(candidates) >= 2, f"{expression!r}: superlative over a single object"
        return [a["id"] for a in candidates if extreme(m[1], a, [o for o in candidates if o is not a], image)]
    m = re.fullmatch(r"the (.+)", expression)
    assert m, expression
    return [a["id"] for a in anns if fits(a, parse_descriptor(m[1]))]


# ----------------------------------------------------------------------------------------------- tests


def test_category_constants_are_fixed_and_heldout_pairs_form_a_latin_square() -> None:
    cats = get_categories()
    assert [c["id"] for c in cats] == list(range(1, 37))
    assert [c["name"] for c in cats] == list(CATEGORIES) == [f"{c} {s}" for c in COLOURS for s in SHAPES]
    assert len(SHAPES) >= 6 and len(COLOURS) == 6 and SIZES == ("small", "large")
    assert sorted(c for c, _ in HELDOUT_PAIRS) == sorted(COLOURS)
    assert sorted(s for _, s in HELDOUT_PAIRS) == sorted(SHAPES)
    assert {c["name"] for c in cats if c["heldout"]} == set(HELDOUT_NAMES)
    rgb = np.array(list(COLOUR_RGB.values()), dtype=float)
    gaps = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(rgb)) * 1e9
    assert gaps.min() > 80  # object colours stay far apart in RGB


def test_same_seed_gives_identical_bytes_and_another_seed_or_split_does_not(tmp_path: Path) -> None:
    a, b, c, d = (tmp_path / n for n in "abcd")
    generate_shapes_world(a, 5, seed=3)
    generate_shapes_world(b, 5, seed=3)
    generate_shapes_world(c, 5, seed=4)
    generate_shapes_world(d, 5, seed=3, split="val")
    for name in JSON_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    pngs = sorted(p.name for p in (a / "images").iterdir())
    assert len(pngs) == 5
    for name in pngs:
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes(), name
    assert (a / "instances.json").read_bytes() != (c / "instances.json").read_bytes()
    first = pngs[0]
    assert (a / "images" / first).read_bytes() != (c / "images" / first).read_bytes()
    val_first = min((d / "images").iterdir())
    assert not np.array_equal(np.asarray(Image.open(a / "images" / first)), np.asarray(Image.open(val_first)))


def test_any_image_regenerates_alone(datasets: dict[str, Path]) -> None:
    images, anns = instances_by_image(datasets["train"])
    for image_id in (1, 17, 40):
        image = images[image_id]
        ex = make_example(7, "train", image_id - 1)
        saved = np.asarray(Image.open(datasets["train"] / "images" / image["file_name"]))
        assert np.array_equal(np.asarray(ex.image), saved)
        assert [o.bbox for o in ex.objects] == [tuple(a["bbox"]) for a in anns[image_id]]


def test_split_rule(datasets: dict[str, Path]) -> None:
    categories = [load(d, "instances.json")["categories"] for d in datasets.values()]
    assert categories[0] == categories[1] == categories[2] == get_categories()
    heldout_ids = {c["id"] for c in categories[0] if c["heldout"]}
    for split, directory in datasets.items():
        used = {a["category_id"] for a in load(directory, "instances.json")["annotations"]}
        if split == "heldout":
            assert used <= heldout_ids and len(used) >= 4
        else:
            assert not used & heldout_ids
            # no sentence of train/val names a held-out pair either
            texts = [g["caption"] for g in load(directory, "grounding.json")["images"]]
            texts += [
                r["expression"] for g in load(directory, "grounding.json")["images"] for r in g["refexps"]
            ]
            texts += [q["question"] for q in load(directory, "vqa_questions.json")["questions"]]
            texts += [c["caption"] for c in load(directory, "captions.json")["annotations"]]
            pattern = re.compile(r"\b(" + "|".join(HELDOUT_NAMES) + r")")
            assert not [t for t in texts if pattern.search(t)]
    train_used = {a["category_id"] for a in load(datasets["train"], "instances.json")["annotations"]}
    assert len(train_used) >= 25  # 30 allowed pairs, 40 images


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_masks_boxes_areas_sizes_and_occlusion(datasets: dict[str, Path], split: str) -> None:
    directory = datasets[split]
    coco = COCO(str(directory / "instances.json"))  # the official loader accepts the file
    assert len(coco.getCatIds()) == 36
    images, anns = instances_by_image(directory)
    counts = []
    for image_id, image in images.items():
        pixels = np.asarray(Image.open(directory / "images" / image["file_name"]).convert("RGB"))
        assert pixels.shape == (image["height"], image["width"], 3)
        assert 192 <= image["width"] <= 384 and 192 <= image["height"] <= 384
        counts.append(len(anns[image_id]))
        union = np.zeros(pixels.shape[:2], dtype=np.int32)
        for ann in anns[image_id]:
            mask = mask_utils.decode(ann["segmentation"]).astype(bool)
            assert mask.shape == pixels.shape[:2]
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [
                int(xs.min()),
                int(ys.min()),
                int(xs.max() - xs.min() + 1),
                int(ys.max() - ys.min() + 1),
            ]
            assert list(mask_utils.toBbox(ann["segmentation"])) == ann["bbox"]
            assert ann["area"] == int(mask.sum()) == int(mask_utils.area(ann["segmentation"]))
            assert (
                ann["iscrowd"] == 0
                and ann["category_id"] == CATEGORIES.index(f"{ann['colour']} {ann['shape']}") + 1
            )
            assert ann["area"] >= MIN_VISIBLE_FRACTION * ann["full_area"] - 1e-9
            # the mask is what shows: its pixels have the object's colour, not the background's or another's
            median = np.median(pixels[mask].astype(float), axis=0)
            assert np.abs(median - COLOUR_RGB[ann["colour"]]).max() <= 16, (image["file_name"], ann["id"])
            union += mask
        assert union.max() <= 1, f"overlapping instance masks in {image['file_name']}"
    assert min(counts) >= 1 and max(counts) <= 8
    if split == "train":
        assert max(counts) >= 6 and min(counts) <= 3  # the range is actually used


def test_grounding_spans_name_their_boxes(datasets: dict[str, Path]) -> None:
    directory = datasets["train"]
    doc = load(directory, "grounding.json")
    _, anns = instances_by_image(directory)
    instances = {a["id"]: a for objects in anns.values() for a in objects}
    grounded: dict[int, list[dict[str, Any]]] = {}
    for ann in doc["annotations"]:
        grounded.setdefault(ann["image_id"], []).append(ann)
    sized = 0
    for image in doc["images"]:
        assert image["original_img_id"] == image["id"] and {"file_name", "height", "width"} <= image.keys()
        caption = image["caption"]
        boxes = grounded[image["id"]]
        assert sorted(b["id"] for b in boxes) == sorted(a["id"] for a in anns[image["id"]])  # all named once
        per_phrase = Counter(b["phrase_ids"] for b in boxes)
        for box in boxes:
            obj = instances[box["id"]]
            assert box["bbox"] == obj["bbox"] and box["category_id"] == obj["category_id"]
            assert len(box["tokens_positive"]) == 1
            start, end = box["tokens_positive"][0]
            text = caption[start:end]
            size, colour, shape = parse_descriptor(text)
            assert (colour, shape) == (obj["colour"], obj["shape"]), (caption, text)
            assert size in (None, obj["size"])
            sized += size is not None
            n = per_phrase[box["phrase_ids"]]
            assert text.split(" ")[-1] == (obj["shape"] if n == 1 else PLURALS_INV[obj["shape"]])
            determiner = caption[:start].rstrip().split(" ")[-1]
            assert NUMBERS[determiner] == n, (caption, text)
            assert [start, end] in image["tokens_positive_eval"][box["phrase_ids"]]
    assert 0 < sized < len(doc["annotations"])  # the size is sometimes named, sometimes not


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_referring_expressions_single_out_their_target(datasets: dict[str, Path], split: str) -> None:
    directory = datasets[split]
    images, anns = instances_by_image(directory)
    kinds: Counter[str] = Counter()
    for entry in load(directory, "grounding.json")["images"]:
        objects = anns[entry["id"]]
        ids = {a["id"] for a in objects}
        for ref in entry["refexps"]:
            assert ref["ann_id"] in ids
            assert resolve(ref["expression"], objects, images[entry["id"]]) == [ref["ann_id"]], ref
            assert ref["bbox"] == next(a["bbox"] for a in objects if a["id"] == ref["ann_id"])
            kinds[ref["kind"]] += 1
    if split == "train":
        assert kinds["attribute"] > 20 and kinds["extreme"] > 10 and kinds["relation"] > 10, kinds


def vqa_records(directory: Path, split: str) -> list[dict[str, Any]]:
    """The questions joined with their annotations, after checking both files' VQAv2 layout."""
    questions, annotations = load(directory, "vqa_questions.json"), load(directory, "vqa_annotations.json")
    assert set(questions) == {"info", "task_type", "data_type", "data_subtype", "questions", "images"}
    assert set(annotations) == {"info", "data_type", "data_subtype", "annotations"}
    assert questions["task_type"] == "Open-Ended"
    assert questions["data_type"] == annotations["data_type"] == "shapes_world"
    assert questions["data_subtype"] == annotations["data_subtype"] == split
    file_names = {im["id"]: im["file_name"] for im in load(directory, "instances.json")["images"]}
    assert {im["id"]: im["file_name"] for im in questions["images"]} == file_names
    assert [q["question_id"] for q in questions["questions"]] == list(
        range(1, len(questions["questions"]) + 1)
    )
    by_id = {a["question_id"]: a for a in annotations["annotations"]}
    assert len(by_id) == len(annotations["annotations"]) == len(questions["questions"])
    records = []
    for q in questions["questions"]:
        assert set(q) == {"image_id", "question", "question_id"}
        ann = by_id[q["question_id"]]
        assert set(ann) == {
            "question_id",
            "image_id",
            "question_type",
            "answer_type",
            "multiple_choice_answer",
            "answers",
        }
        assert ann["image_id"] == q["image_id"] and q["image_id"] in file_names
        answer = ann["multiple_choice_answer"]
        assert ann["answers"] == [
            {"answer": answer, "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)
        ]
        records.append(
            {**q, "answer": answer, "type": ann["question_type"], "answer_type": ann["answer_type"]}
        )
    return records


ANSWER_TYPES = {"count": "number", "existence": "yes/no", "relative position": "yes/no"}


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_vqa_answers_are_true(datasets: dict[str, Path], split: str) -> None:
    directory = datasets[split]
    _, anns = instances_by_image(directory)
    types: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    for qa in vqa_records(directory, split):
        objects, question, answer = anns[qa["image_id"]], qa["question"], qa["answer"]
        types[qa["type"]] += 1
        answers[answer] += 1
        assert qa["answer_type"] == ANSWER_TYPES.get(qa["type"], "other"), qa
        if m := re.fullmatch(r"how many (.+) are there\?", question):
            assert qa["type"] == "count"
            assert answer == str(sum(fits(a, parse_descriptor(m[1])) for a in objects)), qa
        elif m := re.fullmatch(r"what (colour|shape|size) is the (.+)\?", question):
            assert qa["type"] == m[1]
            hits = [a for a in objects if fits(a, parse_descriptor(m[2]))]
            assert len(hits) == 1 and answer == hits[0][m[1]], qa
        elif m := re.fullmatch(r"is there (a|an) (.+)\?", question):
            assert qa["type"] == "existence"
            assert answer == ("yes" if any(fits(a, parse_descriptor(m[2])) for a in objects) else "no"), qa
        elif m := re.fullmatch(
            r"is the (.+?) (to the left of|to the right of|above|below) the (.+)\?", question
        ):
            assert qa["type"] == "relative position"
            a_hits = [a for a in objects if fits(a, parse_descriptor(m[1]))]
            b_hits = [a for a in objects if fits(a, parse_descriptor(m[3]))]
            assert len(a_hits) == len(b_hits) == 1, qa
            rel = RELATION_WORDS[m[2]]
            if answer == "yes":
                assert strictly(rel, a_hits[0], b_hits[0]), qa
            else:
                assert answer == "no" and clearly_not(rel, a_hits[0], b_hits[0]), qa
        else:
            pytest.fail(f"unexpected question {question!r}")
    assert set(types) == {"count", "colour", "shape", "size", "existence", "relative position"}
    assert answers["yes"] > 0 and answers["no"] > 0


# The five caption templates; `listed` is "a red circle, two blue squares and ..." (sizes only in the last)
CAPTION_TEMPLATES = {
    "pairs on background": r"(?P<listed>.+) on a (?P<background>\w+) background\.",
    "count on background": r"(?P<count>\w+) objects? on a (?P<background>\w+) background: (?P<listed>.+)\.",
    "background with": r"a (?P<background>\w+) background with (?P<listed>.+)\.",
    "there are": r"there (?P<verb>is|are) (?P<count>\w+) (?P<noun>objects?): (?P<listed>.+)\.",
    "listing": r"(?P<listed>.+)\.",
}


def parse_caption(text: str) -> tuple[str, re.Match[str]]:
    """The template a caption follows (the first that matches: the plain listing, which matches any
    sentence, comes last) and its match."""
    for name, pattern in CAPTION_TEMPLATES.items():
        if m := re.fullmatch(pattern, text):
            return name, m
    pytest.fail(f"caption of no template: {text!r}")


def test_captions_list_the_objects(datasets: dict[str, Path]) -> None:
    directory = datasets["train"]
    images, anns = instances_by_image(directory)
    doc = load(directory, "captions.json")
    assert [im["id"] for im in doc["images"]] == list(images)
    per_image = Counter(c["image_id"] for c in doc["annotations"])
    assert per_image == dict.fromkeys(images, 5)
    assert [c["id"] for c in doc["annotations"]] == list(range(1, len(doc["annotations"]) + 1))
    templates: dict[int, list[str]] = {}
    for cap in doc["annotations"]:
        text, image = cap["caption"], images[cap["image_id"]]
        objects = anns[cap["image_id"]]
        template, m = parse_caption(text)
        templates.setdefault(cap["image_id"], []).append(template)
        groups = m.groupdict()
        if "background" in groups:
            assert m["background"] == image["background"], text
        else:  # a plain listing says nothing of the background
            assert not re.search(r"\bbackground\b", text), text
        if "count" in groups:
            assert NUMBERS[m["count"]] == len(objects), text
            if "noun" in groups:  # "there is one object" / "there are two objects"
                one = len(objects) == 1
                assert (m["verb"], m["noun"]) == (("is", "object") if one else ("are", "objects")), text
        said: Counter[Desc] = Counter()
        for item in re.split(r", | and ", m["listed"]):
            number, _, words = item.partition(" ")
            said[parse_descriptor(words)] += NUMBERS[number]
        sizes, colours = {s for s, _, _ in said}, {c for _, c, _ in said}
        if None not in sizes:  # the plain listing names every object's size, colour and shape
            assert said == Counter((a["size"], a["colour"], a["shape"]) for a in objects), text
        elif None not in colours:
            assert said == Counter((None, a["colour"], a["shape"]) for a in objects), text
        else:
            assert said == Counter((None, None, a["shape"]) for a in objects), text
    assert all(t == list(CAPTION_TEMPLATES) for t in templates.values()), templates


def test_render_scene_on_the_fly() -> None:
    rng = np.random.Generator(np.random.PCG64(11))
    image, objects = render_scene(
        rng, width=200, height=300, num_objects=5, pairs=[("red", "circle")], background="striped"
    )
    assert image.size == (200, 300) and image.mode == "RGB"
    assert 1 <= len(objects) <= 5 and all(o.name == "red circle" for o in objects)
    union = sum(o.mask.astype(int) for o in objects)
    assert union.max() == 1
    for o in objects:
        assert o.area == o.mask.sum() and o.size in SIZES


def test_cli_writes_the_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shapes"
    assert main(["shapes", "--out", str(out), "--num-images", "3", "--seed", "1", "--split", "val"]) == 0
    printed = capsys.readouterr().out
    assert "3 images" in printed and str(out) in printed
    for name in JSON_FILES:
        assert (out / name).is_file()
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"val_{i:06d}.png" for i in range(3)]
    assert len(load(out, "instances.json")["images"]) == 3


def test_a_split_of_the_old_layout_is_replaced_whole(tmp_path: Path) -> None:
    # earlier versions wrote one vqa.json instead of the two VQAv2 files: such a folder is still a split
    out = tmp_path / "old"
    generate_shapes_world(out, 1, seed=0)
    (out / "vqa_questions.json").rename(out / "vqa.json")
    generate_shapes_world(out, 1, seed=0)
    assert sorted(p.name for p in out.iterdir()) == sorted(["images", *JSON_FILES])


@pytest.mark.parametrize(
    "argv",
    [
        ["--out", "{out}", "--num-images", "0"],
        ["--out", "{out}", "--num-images", "two"],
        ["--out", "{out}", "--num-images", "2", "--split", "test"],
        ["--out", "{out}", "--num-images", "2", "--seed", "-1"],
        ["--out", "{file}", "--num-images", "2"],
        ["--num-images", "2"],
        ["--out", "{out}", "--num-images", "2", "--bogus"],
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    a_file = tmp_path / "not_a_dir"
    a_file.write_text("x")
    places = {"{out}": str(tmp_path / "out"), "{file}": str(a_file)}
    assert main(["shapes", *(places.get(a, a) for a in argv)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert not (tmp_path / "out" / "instances.json").exists()
