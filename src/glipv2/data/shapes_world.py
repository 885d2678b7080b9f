"""ShapesWorld: a deterministic synthetic grounded vision-language dataset.

Each image holds 1-8 flat-coloured objects (6 shapes x 6 colours x 2 sizes) on a muted, textured,
noisy background. Later objects are drawn over earlier ones; an object's instance mask is its
*visible* part, and an object is only placed where every earlier object keeps at least
`MIN_VISIBLE_FRACTION` of its own area visible (otherwise it is re-placed, and after
`MAX_PLACEMENT_TRIES` failed positions left out), so every annotated object is countable and nameable.
Two objects of the same colour never touch: their union would read as one blob.

Besides COCO instances, every image gets one grounding caption with phrase character spans, referring
expressions, VQA questions (in the VQAv2 questions/annotations layout, ten agreeing answers each) and
five captions (COCO captions). The geometry the language relies on is defined here, and the tests check
the files against these definitions independently of the generator:

* the position of an object is its visible box (x, y, w, h); its centre is (x + w/2, y + h/2);
* "A to the left of B" holds when A's box ends where B's begins or before (x_A + w_A <= x_B); "right
  of", "above", "below" likewise. It clearly does *not* hold when A's centre is at or right of B's
  centre. Anything in between is fuzzy and never asked about or used in an expression;
* "the leftmost X" needs at least two X, and the target's centre left of every other X's centre by
  at least `POSITION_MARGIN` times the image width (height for topmost / bottommost);
* a descriptor names any subset of size, colour and shape, in that word order, with the noun
  "object" when the shape is not named ("the small red object", "the circle", "the leftmost object").

Splits: `HELDOUT_PAIRS` (one pair per colour and per shape) never appear in `train` or `val`;
`heldout` images contain only those pairs. Category ids are the same in every split.

Determinism: image `index` of (`seed`, `split`) is drawn from its own `numpy.random.Generator(PCG64)`
seeded with (seed, split code, index), so any image can be regenerated alone (`make_example`), and
every file is written with a fixed key order.
"""

from __future__ import annotations

import colorsys
import itertools
import math
import os
import secrets
import shutil
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..utils.io import DestinationError, atomic_write_json, check_destination

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
SPLITS: tuple[str, ...] = ("train", "val", "heldout")
BACKGROUNDS: tuple[str, ...] = ("striped", "checkered", "mottled")

# Saturated, far apart in RGB (every pair differs by more than 85 in Euclidean distance) and nameable.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (214, 36, 36),
    "green": (38, 168, 62),
    "blue": (40, 82, 216),
    "yellow": (236, 212, 38),
    "purple": (140, 58, 186),
    "orange": (242, 122, 20),
}

# Category names in id order: colour-major, so id = 6 * colour_index + shape_index + 1 (1..36).
CATEGORIES: tuple[str, ...] = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)

# A Latin-square diagonal (shape index = colour index + 3 mod 6): each colour and each shape is held
# out exactly once, so every colour and every shape is still seen in training, only not together.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (colour, SHAPES[(i + 3) % len(SHAPES)]) for i, colour in enumerate(COLOURS)
)

MIN_SIDE, MAX_SIDE = 192, 384
MIN_OBJECTS, MAX_OBJECTS = 1, 8
MIN_VISIBLE_FRACTION = 0.6
MAX_PLACEMENT_TRIES = 30
POSITION_MARGIN = 0.05
# Object radius as a fraction of the image's shorter side. Large is >= 1.47x small, so sizes never blur.
SIZE_RADIUS: dict[str, tuple[float, float]] = {"small": (0.065, 0.09), "large": (0.135, 0.18)}
# Per-shape radius factors so that the shapes look about equally big at the same nominal size.
_SHAPE_SCALE: dict[str, float] = {
    "circle": 0.9,
    "square": 1.0,
    "triangle": 1.12,
    "star": 1.15,
    "hexagon": 0.95,
    "cross": 1.0,
}
_MAX_ROTATION_DEG = 12.0  # enough to vary the look; a 45-degree square would read as a diamond
_SAME_COLOUR_GAP = 3  # px between the boxes of two objects of the same colour
# Standard normal quantiles at the midpoints of 256 equal-probability bins (see render_scene's noise).
_NORMAL_TABLE = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], dtype=np.float32)
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
_DIRECTIONS = ("leftmost", "rightmost", "topmost", "bottommost")
# VQAv2 answer types of the question types; every other type ("colour", "shape", "size") is "other"
_ANSWER_TYPES: dict[str, str] = {"count": "number", "existence": "yes/no", "relative position": "yes/no"}
_ANSWERS_PER_QUESTION = 10
RELATIONS: dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}


def category_id(colour: str, shape: str) -> int:
    """The fixed 1-based category id of a colour+shape pair."""
    return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape) + 1


def get_categories() -> list[dict[str, Any]]:
    """The COCO `categories` list shared by every split: 36 colour+shape pairs with ids 1..36."""
    heldout = set(HELDOUT_PAIRS)
    return [
        {
            "id": category_id(c, s),
            "name": f"{c} {s}",
            "supercategory": s,
            "colour": c,
            "shape": s,
            "heldout": (c, s) in heldout,
        }
        for c in COLOURS
        for s in SHAPES
    ]


def split_pairs(split: str) -> list[tuple[str, str]]:
    """The colour+shape pairs that objects of `split` are drawn from."""
    _check_split(split)
    heldout = set(HELDOUT_PAIRS)
    if split == "heldout":
        return list(HELDOUT_PAIRS)
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in heldout]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image. The split is mixed in so that train/val/heldout differ for one seed."""
    _check_split(split)
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, SPLITS.index(split), index])))


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@dataclass
class ShapeObject:
    """One rendered object. `mask` is its visible part (H x W bool); `bbox` is (x, y, w, h) of it."""

    shape: str
    colour: str
    size: str
    mask: np.ndarray
    full_area: int
    rgb: tuple[int, int, int]
    rotation: float
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    area: int = 0

    @property
    def category_id(self) -> int:
        return category_id(self.colour, self.shape)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.bbox
        return x + w / 2, y + h / 2


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A greyish colour: low saturation keeps it from being taken for any object colour."""
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.03, 0.18), rng.uniform(0.35, 0.8))
    return np.array([r, g, b], dtype=np.float32) * 255


def _background(rng: np.random.Generator, height: int, width: int, kind: str) -> np.ndarray:
    """A float32 H x W x 3 canvas: a two-colour gradient plus a luminance pattern of `kind`."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, 2 * math.pi)
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    # gradient parameter in [0, 1] along a random direction (its extremes lie at two image corners)
    lo = min(0.0, (width - 1) * cos) + min(0.0, (height - 1) * sin)
    hi = max(0.0, (width - 1) * cos) + max(0.0, (height - 1) * sin)
    t = (xs * cos + ys * sin - np.float32(lo)) * np.float32(1.0 / max(hi - lo, 1.0))
    c1, c2 = _muted_colour(rng), _muted_colour(rng)

    period = np.float32(rng.uniform(10, 28))
    theta = rng.uniform(0, math.pi)
    ct, st = np.float32(math.cos(theta) / period), np.float32(math.sin(theta) / period)
    phase = np.float32(rng.uniform(0, 1))

    def square_wave(coord: np.ndarray) -> np.ndarray:  # +1 / -1 bands, one period = `period` px
        return ((coord + phase) % np.float32(1.0) < np.float32(0.5)).astype(np.float32) * 2 - 1

    if kind == "striped":
        pattern = square_wave(xs * ct + ys * st)
    elif kind == "checkered":
        pattern = square_wave(xs * ct + ys * st) * square_wave(ys * ct - xs * st)
    elif kind == "mottled":
        grid = rng.standard_normal((int(rng.integers(4, 9)), int(rng.integers(4, 9)))).astype(np.float32)
        blobs = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR))
        pattern = blobs / np.float32(max(float(np.abs(blobs).max()), 1e-6))
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {', '.join(BACKGROUNDS)}")
    # luminance texture: the same offset in every channel keeps the background's hue muted
    shade = np.float32(rng.uniform(10, 20)) * pattern
    return c1 + t[..., None] * (c2 - c1) + shade[..., None]


def _shape_patch(shape: str, radius: float, rotation: float) -> np.ndarray:
    """A tightly cropped bool mask of one shape, drawn with PIL (no per-pixel Python loops)."""
    r = radius * _SHAPE_SCALE[shape]
    side = math.ceil(2 * r) + 4
    c = side / 2
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    rot = math.radians(rotation)

    def ring(count: int, rad: float, start_deg: float) -> list[tuple[float, float]]:
        return [
            (
                c + rad * math.cos(math.radians(start_deg + 360 * k / count) + rot),
                c + rad * math.sin(math.radians(start_deg + 360 * k / count) + rot),
            )
            for k in range(count)
        ]

    if shape == "circle":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    elif shape == "square":
        draw.polygon(ring(4, r, 45), fill=255)
    elif shape == "triangle":
        draw.polygon(ring(3, r, -90), fill=255)
    elif shape == "hexagon":
        draw.polygon(ring(6, r, 0), fill=255)
    elif shape == "star":
        outer, inner = ring(5, r, -90), ring(5, 0.45 * r, -54)
        draw.polygon([p for pair in zip(outer, inner) for p in pair], fill=255)
    elif shape == "cross":
        a = 0.32 * r  # half-width of an arm
        local = [
            (-a, -r),
            (a, -r),
            (a, -a),
            (r, -a),
            (r, a),
            (a, a),
            (a, r),
            (-a, r),
            (-a, a),
            (-r, a),
            (-r, -a),
            (-a, -a),
        ]
        cos, sin = math.cos(rot), math.sin(rot)
        draw.polygon([(c + x * cos - y * sin, c + x * sin + y * cos) for x, y in local], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask = np.asarray(img) > 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


@dataclass
class _Placed:
    obj: ShapeObject
    window: tuple[int, int, int, int]  # y0, x0, y1, x1 of the full (unoccluded) shape


def _boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def render_scene(
    rng: np.random.Generator,
    *,
    width: int | None = None,
    height: int | None = None,
    num_objects: int | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    background: str | None = None,
    noise: float = 5.0,
) -> tuple[Image.Image, list[ShapeObject]]:
    """Draw one scene from `rng`: an RGB PIL image and its objects (in drawing order, bottom first).

    Unset arguments are drawn from `rng`: width and height independently in [192, 384], 1-8 objects,
    pairs from the `train` split, a background from BACKGROUNDS. Fewer objects than asked for come
    back when one cannot be placed without hiding too much of the others (never fewer than one).
    Usable on the fly in a data loader: the result depends only on the generator's state.
    """
    width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1)) if width is None else int(width)
    height = int(rng.integers(MIN_SIDE, MAX_SIDE + 1)) if height is None else int(height)
    if num_objects is None:
        num_objects = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    pairs = list(pairs) if pairs is not None else split_pairs("train")
    if background is None:
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    if not pairs or num_objects < 1 or min(width, height) < 32:
        raise ValueError("need at least one pair, one object and a side of at least 32 px")
    canvas = _background(rng, height, width, background)

    placed: list[_Placed] = []
    short = min(width, height)
    for _ in range(num_objects):
        colour, shape = pairs[int(rng.integers(len(pairs)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        radius = short * rng.uniform(*SIZE_RADIUS[size])
        rotation = float(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
        patch = _shape_patch(shape, radius, rotation)
        ph, pw = patch.shape
        patch_area = int(patch.sum())
        for _try in range(MAX_PLACEMENT_TRIES):
            y0, x0 = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
            window = (y0, x0, y0 + ph, x0 + pw)
            if _fits(placed, colour, window, patch):
                break
        else:
            continue  # nowhere to put it without hiding the others: leave it out
        for other in placed:  # the new object is on top: cut it out of what lies below
            other.obj.mask[y0 : y0 + ph, x0 : x0 + pw] &= ~patch
        mask = np.zeros((height, width), dtype=bool)
        mask[y0 : y0 + ph, x0 : x0 + pw] = patch
        # a little jitter per object, far smaller than the gaps between the colours
        r, g, b = (
            int(v) for v in np.clip(np.array(COLOUR_RGB[colour]) + rng.integers(-10, 11, size=3), 0, 255)
        )
        obj = ShapeObject(
            shape=shape,
            colour=colour,
            size=size,
            mask=mask,
            full_area=patch_area,
            rgb=(r, g, b),
            rotation=rotation,
        )
        placed.append(_Placed(obj, window))

    for item in placed:  # paint bottom to top; each visible mask is exactly the pixels that show it
        y0, x0, y1, x1 = item.window  # all of an object's pixels lie in its window: work there only
        visible = item.obj.mask[y0:y1, x0:x1]
        canvas[y0:y1, x0:x1][visible] = np.array(item.obj.rgb, dtype=np.float32)
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        item.obj.bbox = (
            x0 + int(cols[0]),
            y0 + int(rows[0]),
            int(cols[-1] - cols[0] + 1),
            int(rows[-1] - rows[0] + 1),
        )
        item.obj.area = int(np.count_nonzero(visible))
    # Gaussian noise from random bytes through an inverse-CDF table: several times cheaper than
    # standard_normal, and 256 levels are far finer than the 8-bit output can show. The +0.5 makes the
    # truncating cast below round to nearest.
    table = _NORMAL_TABLE * np.float32(noise) + np.float32(0.5)
    canvas += table[np.frombuffer(rng.bytes(canvas.size), dtype=np.uint8)].reshape(canvas.shape)
    image = Image.fromarray(np.clip(canvas, 0, 255, out=canvas).astype(np.uint8))
    return image, [item.obj for item in placed]


def _fits(placed: list[_Placed], colour: str, window: tuple[int, int, int, int], patch: np.ndarray) -> bool:
    """Whether a new object at `window` leaves every earlier one enough visible area, and keeps clear of
    objects of its own colour."""
    y0, x0, y1, x1 = window
    for other in placed:
        oy0, ox0, oy1, ox1 = other.window
        if other.obj.colour == colour and not _boxes_apart(
            (x0, y0, x1, y1), (ox0, oy0, ox1, oy1), _SAME_COLOUR_GAP
        ):
            return False
        if x1 <= ox0 or ox1 <= x0 or y1 <= oy0 or oy1 <= y0:
            continue
        visible = other.obj.mask[y0:y1, x0:x1]
        hidden = int(np.count_nonzero(visible & patch))
        remaining = int(np.count_nonzero(other.obj.mask[oy0:oy1, ox0:ox1])) - hidden
        if remaining < MIN_VISIBLE_FRACTION * other.obj.full_area:
            return False
    return True


# --------------------------------------------------------------------------------------------------
# Language
# --------------------------------------------------------------------------------------------------

Descriptor = tuple[str | None, str | None, str | None]  # (size, colour, shape); None = not named
# Which of (size, colour, shape) a descriptor names, fewest first; within a length shape before colour
# before size, as a shape is the most natural single word ("the circle").
_DESCRIPTOR_USES: tuple[tuple[int, int, int], ...] = tuple(
    sorted(itertools.product((0, 1), repeat=3), key=sum)
)


def plural(shape: str) -> str:
    """English plural of a shape noun (cross -> crosses)."""
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def _article(words: str) -> str:
    return "an" if words[0] in "aeiou" else "a"


def describe(desc: Descriptor, *, count: int = 1) -> str:
    """The words of a descriptor without determiner: "small red circle", "red objects", "circle"."""
    size, colour, shape = desc
    noun = shape if shape is not None else "object"
    if count != 1:
        noun = plural(noun)
    return " ".join(w for w in (size, colour, noun) if w is not None)


def matches(obj: ShapeObject, desc: Descriptor) -> bool:
    """Whether `obj` fits every attribute the descriptor names."""
    size, colour, shape = desc
    return (
        (size is None or obj.size == size)
        and (colour is None or obj.colour == colour)
        and (shape is None or obj.shape == shape)
    )


def _descriptors(obj: ShapeObject) -> list[Descriptor]:
    """All descriptors that fit `obj`, fewest named attributes first (the empty one included)."""
    return [
        (obj.size if use[0] else None, obj.colour if use[1] else None, obj.shape if use[2] else None)
        for use in _DESCRIPTOR_USES
    ]


def strictly(relation: str, a: ShapeObject, b: ShapeObject) -> bool:
    """Whether box a lies entirely on the `relation` side of box b (left/right/above/below)."""
    ax, ay, aw, ah = a.bbox
    bx, by, bw, bh = b.bbox
    return {"left": ax + aw <= bx, "right": ax >= bx + bw, "above": ay + ah <= by, "below": ay >= by + bh}[
        relation
    ]


def clearly_not(relation: str, a: ShapeObject, b: ShapeObject) -> bool:
    """Whether a's centre is on b's centre or beyond it, away from the `relation` side."""
    (acx, acy), (bcx, bcy) = a.center, b.center
    return {"left": acx >= bcx, "right": acx <= bcx, "above": acy >= bcy, "below": acy <= bcy}[relation]


def is_extreme(
    direction: str, target: ShapeObject, others: Sequence[ShapeObject], width: int, height: int
) -> bool:
    """Whether `target` is the `direction`-most (leftmost...) of `others` + itself, by a clear margin."""
    axis, sign = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}[
        direction
    ]
    margin = POSITION_MARGIN * (width if axis == 0 else height)
    t = target.center[axis]
    return all(sign * (o.center[axis] - t) >= margin for o in others)


def _unique_descriptor(
    objects: Sequence[ShapeObject], index: int, rng: np.random.Generator | None = None
) -> Descriptor | None:
    """A shortest attribute descriptor naming objects[index] alone (random among the shortest)."""
    best: list[Descriptor] = []
    for desc in _descriptors(objects[index])[1:]:
        if best and sum(v is not None for v in desc) > sum(v is not None for v in best[0]):
            break
        if sum(matches(o, desc) for o in objects) == 1:
            best.append(desc)
    if not best:
        return None
    return best[int(rng.integers(len(best)))] if rng is not None and len(best) > 1 else best[0]


@dataclass
class Phrase:
    """A grounding phrase: its text, its [start, end) span in the caption and the objects it names."""

    text: str
    span: tuple[int, int]
    objects: list[int]


def grounding_caption(
    rng: np.random.Generator, objects: Sequence[ShapeObject], background: str
) -> tuple[str, list[Phrase]]:
    """One caption naming every object once, e.g. "a small red circle, two blue squares and a green star."

    Objects of one colour+shape are grouped; the size is named unless the group mixes sizes (then one
    phrase per size) or, at random, dropped when it is shared. A span covers the phrase's words after
    its determiner ("small red circle", "blue squares").
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for i, obj in enumerate(objects):
        groups.setdefault((obj.colour, obj.shape), []).append(i)
    items: list[tuple[Descriptor, list[int]]] = []
    for (colour, shape), members in groups.items():
        sizes = [s for s in SIZES if any(objects[i].size == s for i in members)]
        if len(sizes) == 1 and rng.random() < 0.5:
            items.append(((None, colour, shape), members))
        else:
            for s in sizes:
                items.append(((s, colour, shape), [i for i in members if objects[i].size == s]))
    order = rng.permutation(len(items))
    template = int(rng.integers(3))
    caption = f"a {background} background with " if template == 2 else ""
    phrases: list[Phrase] = []
    for position, k in enumerate(order):
        desc, members = items[int(k)]
        if position > 0:
            caption += " and " if position == len(order) - 1 else ", "
        words = describe(desc, count=len(members))
        caption += (_article(words) if len(members) == 1 else _NUMBER_WORDS[len(members)]) + " "
        phrases.append(Phrase(words, (len(caption), len(caption) + len(words)), list(members)))
        caption += words
    caption += f" on a {background} background." if template == 1 else "."
    return caption, phrases


@dataclass
class RefExp:
    """A referring expression naming exactly one object (`target`), maybe relative to a `landmark`."""

    expression: str
    target: int
    kind: str  # "attribute", "extreme" or "relation"
    landmark: int | None = None


def referring_expressions(
    rng: np.random.Generator, objects: Sequence[ShapeObject], width: int, height: int
) -> list[RefExp]:
    """Up to three expressions per object: by attributes, as the leftmost/... of its kind, and relative to
    a uniquely named landmark. Each candidate is checked to pick out its target alone (see the module
    docstring for the geometry) before it is kept."""
    out: list[RefExp] = []
    landmarks = {i: _unique_descriptor(objects, i) for i in range(len(objects))}
    for t, target in enumerate(objects):
        desc = _unique_descriptor(objects, t, rng)
        if desc is not None:
            out.append(RefExp(f"the {describe(desc)}", t, "attribute"))

        extremes: list[tuple[str, Descriptor]] = []
        for d in _descriptors(target):
            others = [o for i, o in enumerate(objects) if i != t and matches(o, d)]
            if others:  # with nothing else of its kind, "leftmost" would add nothing
                extremes += [
                    (direction, d)
                    for direction in _DIRECTIONS
                    if is_extreme(direction, target, others, width, height)
                ]
        if extremes:
            direction, d = extremes[int(rng.integers(len(extremes)))]
            words = describe(d)
            out.append(RefExp(f"the {direction} {words}", t, "extreme"))

        relational: list[tuple[Descriptor, str, int]] = []
        for lm, lm_desc in landmarks.items():
            if lm == t or lm_desc is None:
                continue
            for d in _descriptors(target):
                candidates = [i for i, o in enumerate(objects) if i not in (t, lm) and matches(o, d)]
                if not candidates:  # the descriptor alone already names the target
                    continue
                for rel in RELATIONS:
                    if strictly(rel, target, objects[lm]) and all(
                        clearly_not(rel, objects[i], objects[lm]) for i in candidates
                    ):
                        relational.append((d, rel, lm))
        if relational:
            d, rel, lm = relational[int(rng.integers(len(relational)))]
            lm_desc = landmarks[lm]
            assert lm_desc is not None
            out.append(
                RefExp(f"the {describe(d)} {RELATIONS[rel]} the {describe(lm_desc)}", t, "relation", lm)
            )
    return out


def vqa_pairs(
    rng: np.random.Generator, objects: Sequence[ShapeObject], pairs: Sequence[tuple[str, str]]
) -> list[dict[str, str]]:
    """Question/answer/type triples: counting, colour, shape, size, existence and relative position.

    Attribute questions are only asked about uniquely named objects; existence negatives and counted
    colour+shape pairs come from `pairs` (the split's own), so train text never names a held-out pair.
    """
    qa: list[dict[str, str]] = []

    def pick(candidates: list[dict[str, str]], k: int) -> list[dict[str, str]]:
        if len(candidates) <= k:
            return candidates
        return [candidates[int(i)] for i in sorted(rng.choice(len(candidates), size=k, replace=False))]

    counts: list[dict[str, str]] = [{"question": "how many objects are there?", "answer": str(len(objects))}]
    for shape in SHAPES:
        n = sum(o.shape == shape for o in objects)
        counts.append({"question": f"how many {plural(shape)} are there?", "answer": str(n)})
    for colour in COLOURS:
        n = sum(o.colour == colour for o in objects)
        counts.append({"question": f"how many {colour} objects are there?", "answer": str(n)})
    for colour, shape in sorted({(o.colour, o.shape) for o in objects}):
        n = sum(o.colour == colour and o.shape == shape for o in objects)
        counts.append({"question": f"how many {colour} {plural(shape)} are there?", "answer": str(n)})
    qa += [dict(c, type="count") for c in pick(counts, 3)]

    attribute: dict[str, list[dict[str, str]]] = {"colour": [], "shape": [], "size": []}
    for obj in objects:
        for desc in _descriptors(obj)[1:]:
            if sum(matches(o, desc) for o in objects) != 1:
                continue
            size, colour, shape = desc
            if colour is None:
                attribute["colour"].append(
                    {"question": f"what colour is the {describe(desc)}?", "answer": obj.colour}
                )
            if shape is None:
                attribute["shape"].append(
                    {"question": f"what shape is the {describe(desc)}?", "answer": obj.shape}
                )
            if size is None:
                attribute["size"].append(
                    {"question": f"what size is the {describe(desc)}?", "answer": obj.size}
                )
    for kind, candidates in attribute.items():
        qa += [dict(c, type=kind) for c in pick(candidates, 1)]

    present = {(o.colour, o.shape) for o in objects}
    yes = [p for p in pairs if p in present]
    no = [p for p in pairs if p not in present]
    for options, answer in ((yes, "yes"), (no, "no")):
        if options:
            colour, shape = options[int(rng.integers(len(options)))]
            words = f"{colour} {shape}"
            qa.append(
                {"question": f"is there {_article(words)} {words}?", "answer": answer, "type": "existence"}
            )

    named = {i: d for i in range(len(objects)) if (d := _unique_descriptor(objects, i)) is not None}
    relation: dict[str, list[dict[str, str]]] = {"yes": [], "no": []}
    for a, da in named.items():
        for b, db in named.items():
            if a == b:
                continue
            for rel, words in RELATIONS.items():
                question = f"is the {describe(da)} {words} the {describe(db)}?"
                if strictly(rel, objects[a], objects[b]):
                    relation["yes"].append({"question": question, "answer": "yes"})
                elif clearly_not(rel, objects[a], objects[b]):
                    relation["no"].append({"question": question, "answer": "no"})
    for candidates in relation.values():
        qa += [dict(c, type="relative position") for c in pick(candidates, 1)]
    return qa


def _listing(counter: list[tuple[str, int]]) -> str:
    """ "two red circles, a blue square and an orange cross" from (singular words, count) pairs."""
    parts = []
    for words, n in counter:
        if n == 1:
            parts.append(f"{_article(words)} {words}")
        else:
            head, _, noun = words.rpartition(" ")
            parts.append(f"{_NUMBER_WORDS[n]} {(head + ' ') if head else ''}{plural(noun)}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def image_captions(objects: Sequence[ShapeObject], background: str) -> list[str]:
    """Five captions, as COCO has five references per image: the objects by colour+shape on the
    background, the object count on the background with the shapes, the background with the objects,
    "there is/are N object(s): ...", and a plain listing by size+colour+shape. Deterministic."""

    def listing(words: Counter[str]) -> str:  # most common first, then by name: not drawing order
        return _listing(sorted(words.items(), key=lambda kv: (-kv[1], kv[0])))

    by_pair = listing(Counter(f"{o.colour} {o.shape}" for o in objects))
    by_shape = listing(Counter(o.shape for o in objects))
    by_all = listing(Counter(f"{o.size} {o.colour} {o.shape}" for o in objects))
    n = len(objects)
    count = f"{_NUMBER_WORDS[n]} {'object' if n == 1 else 'objects'}"
    return [
        f"{by_pair} on a {background} background.",
        f"{count} on a {background} background: {by_shape}.",
        f"a {background} background with {by_pair}.",
        f"there {'is' if n == 1 else 'are'} {count}: {by_pair}.",
        f"{by_all}.",
    ]


# --------------------------------------------------------------------------------------------------
# Whole examples and the dataset on disk
# --------------------------------------------------------------------------------------------------


@dataclass
class ShapesExample:
    """One image with everything said about it. Language refers to objects by their list index."""

    image: Image.Image
    objects: list[ShapeObject]
    background: str
    caption: str
    phrases: list[Phrase]
    refexps: list[RefExp]
    vqa: list[dict[str, str]]
    captions: list[str] = field(default_factory=list)


def make_example(seed: int, split: str, index: int) -> ShapesExample:
    """Image `index` of (`seed`, `split`), regenerated alone: identical to the one the dataset holds."""
    rng = image_rng(seed, split, index)
    pairs = split_pairs(split)
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    image, objects = render_scene(rng, pairs=pairs, background=background)
    caption, phrases = grounding_caption(rng, objects, background)
    refexps = referring_expressions(rng, objects, image.width, image.height)
    vqa = vqa_pairs(rng, objects, pairs)
    return ShapesExample(
        image, objects, background, caption, phrases, refexps, vqa, image_captions(objects, background)
    )


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a bool mask, with `counts` as str so it can go into JSON."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _write_json(path: Path, document: Any) -> None:
    # compact and key-sorted (same arguments, same bytes); never a half-written file
    atomic_write_json(path, document, sort_keys=True, separators=(",", ":"), end="\n")


def generate_shapes_world(
    out_dir: str | os.PathLike[str],
    num_images: int,
    seed: int,
    split: str = "train",
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Write `num_images` images of `split` and their annotations under `out_dir`; return a summary.

    Layout: images/<split>_<index>.png, instances.json (COCO, RLE masks), grounding.json (MDETR style,
    with `refexps` per image), vqa_questions.json and vqa_annotations.json (VQAv2 layout; the questions
    file also lists `images` with their file names), captions.json (COCO captions, five per image).
    Same arguments, same bytes.
    Image ids are index + 1; a grounding annotation has the id of the same object in instances.json,
    and a referring expression's `ann_id` (and `landmark_ann_id`) are such ids.

    Everything is written into a hidden sibling folder and renamed to `out_dir` at the end, so an
    interrupted run leaves `out_dir` as it was, never images and json files that disagree. `out_dir`
    may be absent, an empty folder, or a ShapesWorld folder (replaced whole); a folder with other
    files, a symlink or a file is refused before any work (`ValueError`).
    """
    _check_split(split)
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    _check_output_folder(out)
    final = Path(os.path.abspath(out))  # `--out .` has a parent to put the temporary folder in
    staging = final.parent / f".{final.name}.partial-{secrets.token_hex(4)}"
    try:
        (staging / "images").mkdir(parents=True)
        summary = _write_split(staging, num_images, seed, split, progress)
        _move_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {**summary, "out_dir": str(out)}


SPLIT_JSON_FILES: tuple[str, ...] = (
    "instances.json",
    "grounding.json",
    "vqa_questions.json",
    "vqa_annotations.json",
    "captions.json",
)
# "vqa.json": what earlier versions wrote instead of the two VQAv2 files, so such a split is replaced too
_SPLIT_FILES = frozenset({"images", "vqa.json", *SPLIT_JSON_FILES})


def _is_split_folder(folder: Path) -> bool:
    """Whether `folder` holds nothing but a ShapesWorld split (possibly none of it: empty)."""
    entries = list(folder.iterdir())
    if any(e.name not in _SPLIT_FILES or e.is_symlink() for e in entries):
        return False
    images = folder / "images"
    return not images.exists() or (
        images.is_dir() and all(p.suffix == ".png" and p.is_file() for p in images.iterdir())
    )


def _check_output_folder(out: Path) -> None:
    try:
        check_destination(out, folder=True)
    except DestinationError as err:
        raise ValueError(str(err)) from None
    if out.exists() and not _is_split_folder(out):
        raise ValueError(
            f"{out}: holds files that are not a ShapesWorld split; give a new or empty folder "
            "(a previous split is replaced whole, so nothing else may be in it)"
        )


def _move_into_place(staging: Path, final: Path) -> None:
    """`staging` becomes `final`: renamed onto an absent or empty folder, or — over a previous
    split — after moving that aside (a crash in between leaves no `final`, never a mixed one)."""
    try:
        os.replace(staging, final)  # absent, or an empty folder (POSIX rename replaces those)
        return
    except OSError:
        if not final.is_dir():
            raise
    if not _is_split_folder(final):  # files appeared while generating
        raise ValueError(f"{final}: files appeared in it while generating; nothing was replaced")
    old = final.parent / f".{final.name}.old-{secrets.token_hex(4)}"
    os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _write_split(out: Path, num_images: int, seed: int, split: str, progress: bool) -> dict[str, Any]:
    """Generate the split into `out` (a fresh folder with images/)."""
    from tqdm import tqdm

    images: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    grounding_images: list[dict[str, Any]] = []
    grounding_anns: list[dict[str, Any]] = []
    questions: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    caption_anns: list[dict[str, Any]] = []
    next_ann = 1
    for index in tqdm(range(num_images), desc=f"shapes {split}", unit="image", disable=not progress):
        ex = make_example(seed, split, index)
        image_id = index + 1
        file_name = f"{split}_{index:06d}.png"
        # Huffman-only deflate: LZ matching finds little in per-pixel noise, so this is both faster and
        # smaller than the default strategy
        ex.image.save(
            out / "images" / file_name, format="PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY
        )
        w, h = ex.image.size
        images.append(
            {"id": image_id, "file_name": file_name, "width": w, "height": h, "background": ex.background}
        )
        ann_ids = list(range(next_ann, next_ann + len(ex.objects)))
        next_ann += len(ex.objects)
        for ann_id, obj in zip(ann_ids, ex.objects):
            instances.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": obj.category_id,
                    "bbox": list(obj.bbox),
                    "area": obj.area,
                    "iscrowd": 0,
                    "segmentation": encode_mask(obj.mask),
                    "shape": obj.shape,
                    "colour": obj.colour,
                    "size": obj.size,
                    "full_area": obj.full_area,
                }
            )
        phrase_of = {i: p for p, phrase in enumerate(ex.phrases) for i in phrase.objects}
        for i, (ann_id, obj) in enumerate(zip(ann_ids, ex.objects)):
            phrase = ex.phrases[phrase_of[i]]
            grounding_anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "bbox": list(obj.bbox),
                    "area": obj.area,
                    "iscrowd": 0,
                    "category_id": obj.category_id,
                    "tokens_positive": [list(phrase.span)],
                    "phrase_ids": phrase_of[i],
                }
            )
        grounding_images.append(
            {
                "id": image_id,
                "original_img_id": image_id,
                "file_name": file_name,
                "width": w,
                "height": h,
                "caption": ex.caption,
                "dataset_name": "shapes_world",
                "tokens_positive_eval": [[list(p.span)] for p in ex.phrases],
                "phrases": [
                    {
                        "phrase_id": k,
                        "text": p.text,
                        "tokens_positive": [list(p.span)],
                        "ann_ids": [ann_ids[i] for i in p.objects],
                    }
                    for k, p in enumerate(ex.phrases)
                ],
                "refexps": [
                    {
                        "expression": r.expression,
                        "ann_id": ann_ids[r.target],
                        "kind": r.kind,
                        "bbox": list(ex.objects[r.target].bbox),
                        "landmark_ann_id": None if r.landmark is None else ann_ids[r.landmark],
                    }
                    for r in ex.refexps
                ],
            }
        )
        for qa in ex.vqa:
            question_id = len(questions) + 1
            questions.append({"image_id": image_id, "question": qa["question"], "question_id": question_id})
            answers.append(
                {
                    "question_id": question_id,
                    "image_id": image_id,
                    "question_type": qa["type"],
                    "answer_type": _ANSWER_TYPES.get(qa["type"], "other"),
                    "multiple_choice_answer": qa["answer"],
                    # one true answer, so all ten annotators agree (VQAv2 has ten answers per question)
                    "answers": [
                        {"answer": qa["answer"], "answer_confidence": "yes", "answer_id": k}
                        for k in range(1, _ANSWERS_PER_QUESTION + 1)
                    ],
                }
            )
        for text in ex.captions:
            caption_anns.append({"id": len(caption_anns) + 1, "image_id": image_id, "caption": text})

    info = {
        "description": "ShapesWorld synthetic grounded vision-language data",
        "split": split,
        "seed": seed,
        "version": "1.0",
    }
    categories = get_categories()
    _write_json(
        out / "instances.json",
        {"info": info, "images": images, "annotations": instances, "categories": categories},
    )
    _write_json(
        out / "grounding.json",
        {"info": info, "images": grounding_images, "annotations": grounding_anns, "categories": categories},
    )
    vqa_header = {"info": info, "data_type": "shapes_world", "data_subtype": split}
    _write_json(
        out / "vqa_questions.json",
        {
            **vqa_header,
            "task_type": "Open-Ended",
            "questions": questions,
            "images": [{"id": im["id"], "file_name": im["file_name"]} for im in images],
        },
    )
    _write_json(out / "vqa_annotations.json", {**vqa_header, "annotations": answers})
    _write_json(out / "captions.json", {"info": info, "images": images, "annotations": caption_anns})
    return {
        "out_dir": str(out),
        "split": split,
        "seed": seed,
        "num_images": num_images,
        "num_objects": len(instances),
        "num_refexps": sum(len(g["refexps"]) for g in grounding_images),
        "num_questions": len(questions),
        "num_captions": len(caption_anns),
        "categories_used": len({a["category_id"] for a in instances}),
    }
