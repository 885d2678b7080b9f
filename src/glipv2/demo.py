"""`glipv2 demo`: one forward pass of a preset on an embedded synthetic image, summarised.

Until trained weights ship, the head is randomly initialised (only the text encoder of
`glipv2_tiny` is pretrained), so the demo shows what the network computes, not detections.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from .inference import PostProcessor
from .modeling import GLIPv2, build_model
from .processing import grounding_prompt, image_to_tensor, pad_batch

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


def run_demo(model_name: str = "glipv2_tiny") -> dict[str, object]:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model: GLIPv2 = build_model(model_name).eval()
    build_s = time.perf_counter() - t0
    pixel_values, image_sizes = pad_batch([image_to_tensor(demo_image())], model.config.size_divisibility)
    prompt = grounding_prompt(DEMO_CAPTION, phrases=list(DEMO_PHRASES))
    text = model.tokenize(prompt.text)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(pixel_values, text.input_ids, text.attention_mask, image_sizes)
    forward_s = time.perf_counter() - t0

    print(f"model {model_name}: {model.num_parameters() / 1e6:.2f} M parameters (built in {build_s:.1f} s)")
    print(f"input {tuple(pixel_values.shape)}, prompt {DEMO_CAPTION!r} -> {text.input_ids.shape[1]} token slots")
    print(f"forward pass: {forward_s:.2f} s")
    for level, (s, a) in enumerate(zip(out.logits, out.anchors)):
        print(f"  P{level + 3}: region-word logits {tuple(s.shape)}, anchors {tuple(a.shape)}")
    print(f"  P̊ {tuple(out.token_features.shape)} -> P {tuple(out.fused_token_features.shape)}")

    # the official post-processing of this same output (no resize: boxes are in image pixels);
    # detections come best first, so each phrase's first one is its best
    [detections] = PostProcessor(inference_threshold=0.0)(
        out, [prompt.positive_map(text.offsets[0], text.attention_mask[0])])
    summary: dict[str, object] = {}
    for index, phrase in enumerate(DEMO_PHRASES):
        mine = detections.select(detections.labels == index)
        if len(mine) == 0:
            continue
        box, score = mine.boxes[0].tolist(), float(mine.scores[0])
        summary[phrase] = {"score": score, "box": box}
        print(f"  {phrase!r}: best score {score:.3f} at box [{', '.join(f'{v:.0f}' for v in box)}]")
    print("note: the detection head is randomly initialised until trained weights ship; "
          "scores above are not detections.")
    return summary
