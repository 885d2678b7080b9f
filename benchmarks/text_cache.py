"""One image against the 1,203-name LVIS vocabulary: the text cache cold vs warm.

The vocabulary does not fit one prompt, so the Predictor splits it into chunks (one forward pass
each, as the official chunked evaluation). The first call encodes every chunk prompt with the text
encoder; later calls (the next image of a folder or dataset) take P̊ from the cache. Calls are
interleaved cold, warm, cold, warm, ... in one process (this CPU's speed drifts), 2 threads.

    python benchmarks/text_cache.py [--model glipv2_tiny] [--rounds 2] [--size 800,1333] [--chunk-size 40]
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import glipv2
from glipv2 import GLIPv2Processor, Predictor

LVIS_NAMES = Path(__file__).resolve().parents[1] / "tests" / "data" / "lvis_v1_category_names.txt"


def clean(name: str) -> str:
    """The official evaluation's cleaning: drop "(...)", "_" -> " "."""
    return " ".join(re.sub(r"\(.*?\)", "", name).replace("_", " ").split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="glipv2_tiny")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", default="800,1333", help="SHORT,LONG test resize")
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="names per pass (default: packed to 256 tokens)"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    short, long = (int(v) for v in args.size.split(","))
    model = glipv2.build_model(args.model).eval()
    predictor = Predictor(model, GLIPv2Processor.from_config(model.config, min_size=short, max_size=long))
    names = [clean(n) for n in LVIS_NAMES.read_text().splitlines()]
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (480, 640, 3), dtype=np.uint8))
    vocabulary = predictor.detection_vocabulary(names, args.chunk_size)
    tokens = [len(predictor.processor.tokenizer(c.prompt.text)["input_ids"]) for c in vocabulary.chunks]
    print(
        f"{args.model}: {len(names)} names -> {len(vocabulary.chunks)} chunk prompts "
        f"({min(tokens)}-{max(tokens)} tokens); image 640x480 -> {predictor.processor.resized_size(640, 480)}"
    )

    cold, warm, encode = [], [], []
    for r in range(args.rounds):
        predictor.clear_text_cache()
        t0 = time.perf_counter()
        for chunk in vocabulary.chunks:
            predictor.encode(chunk.prompt.text)
        encode.append(time.perf_counter() - t0)
        predictor.clear_text_cache()
        t0 = time.perf_counter()
        predictor.predict([image], [vocabulary], threshold=0.0)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        predictor.predict([image], [vocabulary], threshold=0.0)
        warm.append(time.perf_counter() - t0)
        print(
            f"round {r + 1}: text encoding alone {encode[-1]:.2f} s, cold call {cold[-1]:.2f} s, "
            f"warm call {warm[-1]:.2f} s, warm/cold {warm[-1] / cold[-1]:.3f}"
        )
    print(
        f"median: cold {statistics.median(cold):.2f} s, warm {statistics.median(warm):.2f} s, "
        f"saved {statistics.median(cold) - statistics.median(warm):.2f} s per image "
        f"(text encoding alone {statistics.median(encode):.2f} s); cache hits {predictor.text_cache.hits}"
    )


if __name__ == "__main__":
    main()
