"""Caption decoding: the image side computed once (`GLIPv2.generate_captions`) against re-running the
whole model on every prefix, and beam sizes 1 and 3.

Greedy decoding of the same images both ways gives the same tokens (checked here and in
tests/modeling/test_understanding_heads.py); what differs is what a step runs. Calls are
interleaved (cached, full, cached, full, ...) in one process, since this CPU's speed drifts.

    python benchmarks/caption_decode.py [--model DIR] [--images 4] [--rounds 3]

DIR defaults to the shipped model folder, src/glipv2/weights/glipv2_tiny_shapes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import glipv2
from glipv2 import GLIPv2Processor
from glipv2.data.shapes_world import generate_shapes_world
from glipv2.modeling.heads import greedy_decode
from glipv2.utils.shipped import DEFAULT_SHIPPED_MODEL, SHIPPED_WEIGHTS_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHIPPED_WEIGHTS_DIR / DEFAULT_SHIPPED_MODEL))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = glipv2.load_model(args.model).eval()
    processor = GLIPv2Processor.for_model(model)
    bos, eos = processor.caption_start_id, processor.caption_end_id
    with tempfile.TemporaryDirectory() as tmp:
        generate_shapes_world(Path(tmp), args.images, 101, split="val", progress=False)
        files = sorted((Path(tmp) / "images").glob("*.png"))
        batches = [processor.preprocess([f]) for f in files]

    def cached(beam: int) -> list[list[int]]:
        return [
            model.generate_captions(
                b.pixel_values,
                b.image_sizes,
                bos_token_id=bos,
                eos_token_id=eos,
                max_length=args.max_length,
                beam_size=beam,
            )[0]
            for b in batches
        ]

    def full() -> list[list[int]]:
        out = []
        for b in batches:

            def step(ids: torch.Tensor, mask: torch.Tensor, b=b) -> torch.Tensor:
                logits = model(b.pixel_values, ids, mask, b.image_sizes, heads=["caption"]).caption_logits
                return logits[:, -1].float().log_softmax(-1)

            with torch.no_grad():
                out.append(greedy_decode(step, 1, bos, eos, args.max_length, b.pixel_values.device)[0])
        return out

    runs = {"cached greedy": lambda: cached(1), "full-model greedy": full, "cached beam 3": lambda: cached(3)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - start)
    assert tokens["cached greedy"] == tokens["full-model greedy"], "cached and full decoding disagree"
    generated = sum(len(t) + 1 for t in tokens["cached greedy"])
    print(
        f"{args.model}: {args.images} ShapesWorld val images, {generated} greedy tokens (with [SEP]), {args.rounds} rounds"
    )
    base = statistics.median(times["cached greedy"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:18s} median {median:6.2f} s  ({median / base:.2f}× cached greedy)")


if __name__ == "__main__":
    main()
