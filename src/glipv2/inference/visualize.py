"""Annotated images: boxes, names and scores, one colour per label."""

from __future__ import annotations

import colorsys

from PIL import Image, ImageDraw, ImageFont

from .detections import Detections


def label_colour(index: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per label index (golden-ratio hue steps)."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image: Image.Image, detections: Detections, line_width: int | None = None, mask_opacity: float = 0.45
) -> Image.Image:
    """A copy of `image` with every detection drawn: its mask (if any) tinted in its label's colour,
    its box, and "name 0.87" on a filled tag."""
    canvas = image.convert("RGB").copy()
    if detections.masks is not None and len(detections):
        canvas = _tint_masks(canvas, detections, mask_opacity)
    draw = ImageDraw.Draw(canvas)
    width = line_width or max(1, round(min(canvas.size) / 200))
    font = ImageFont.load_default()
    # lowest score first, so the best boxes and tags end up on top
    order = detections.scores.argsort().tolist()
    boxes, scores, labels = detections.boxes.tolist(), detections.scores.tolist(), detections.labels.tolist()
    for i in order:
        # a box under one pixel wide can come out with x2 < x1 (legacy +1 sizes); PIL refuses those
        x1, x2 = sorted(boxes[i][0::2])
        y1, y2 = sorted(boxes[i][1::2])
        colour = label_colour(labels[i])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"{detections.names[labels[i]]} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tag_h = bottom - top + 4
        ty = y1 - tag_h if y1 - tag_h >= 0 else y1
        draw.rectangle([x1, ty, x1 + right - left + 4, ty + tag_h], fill=colour)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text(
            (x1 + 2, ty + 2 - top), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font
        )
    return canvas


def _tint_masks(canvas: Image.Image, detections: Detections, opacity: float) -> Image.Image:
    import numpy as np

    pixels = np.asarray(canvas, dtype=np.float32).copy()
    masks = detections.masks.detach().cpu().numpy().astype(bool)  # type: ignore[union-attr]
    if masks.shape[1:] != pixels.shape[:2]:
        raise ValueError(f"masks of {masks.shape[1:]} for an image of {pixels.shape[:2]}")
    for i in detections.scores.argsort().tolist():  # best last, on top
        colour = np.array(label_colour(int(detections.labels[i])), dtype=np.float32)
        pixels[masks[i]] = (1 - opacity) * pixels[masks[i]] + opacity * colour
    return Image.fromarray(pixels.round().astype(np.uint8))


def draw_text_banner(image: Image.Image, lines: list[str]) -> Image.Image:
    """A copy of `image` with a white band below it holding `lines` (an answer, a caption), wrapped
    to the image width."""
    canvas = image.convert("RGB")
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(canvas)
    # an empty line stays, as a blank line of the band
    wrapped = [piece for line in lines for piece in (wrap_text(line, font, canvas.width - 8) or [""])]
    _, top, _, bottom = probe.textbbox((0, 0), "Ag", font=font)
    line_h = bottom - top + 4
    out = Image.new("RGB", (canvas.width, canvas.height + line_h * len(wrapped) + 6), (255, 255, 255))
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(wrapped):
        draw.text((4, canvas.height + 4 + i * line_h - top), text, fill=(0, 0, 0), font=font)
    return out


def wrap_text(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: float) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` pixels in `font` (a word longer
    than that stands alone on its line); [] for blank text."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and font.getlength(trial) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return [*lines, current] if current else lines
