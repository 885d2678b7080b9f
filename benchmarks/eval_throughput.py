"""Throughput of `glipv2 eval coco` with the tiny preset on a ShapesWorld val split (CPU, 2 threads).

Runs the command in this process (its own timing line: model loading excluded, scoring included)
for batch sizes 1 and 4, interleaved round by round (this CPU's speed drifts), and prints images/s
per run and the median per batch size.

    python benchmarks/eval_throughput.py [--model glipv2_tiny] [--images 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import statistics
import tempfile
from pathlib import Path

import torch

from glipv2.cli import main as glipv2_main
from glipv2.data.shapes_world import generate_shapes_world


def run_once(model: str, data: Path, out: Path, batch_size: int) -> float:
    """images/s as `glipv2 eval` reports it."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = glipv2_main(
            [
                "eval",
                "coco",
                "--model",
                model,
                "--ann",
                str(data / "instances.json"),
                "--images",
                str(data / "images"),
                "--out",
                str(out),
                "--batch-size",
                str(batch_size),
                "--no-progress",
            ]
        )
    found = re.search(r"\(([\d.]+) images/s\)", err.getvalue())
    if code != 0 or found is None:
        raise RuntimeError(f"glipv2 eval failed: {err.getvalue()[-500:]}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="glipv2_tiny", help="preset (random weights) or model folder")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "val"
        generate_shapes_world(data, args.images, seed=1, split="val", progress=False)
        print(
            f"{args.model}, {args.images} ShapesWorld val images (192-384 px, 36-name class prompt), "
            f"{torch.get_num_threads()} threads"
        )
        speeds: dict[int, list[float]] = {1: [], 4: []}
        for r in range(args.rounds):
            for batch_size, measured in speeds.items():
                measured.append(run_once(args.model, data, Path(tmp) / "metrics.json", batch_size))
            print(
                f"round {r + 1}: " + ", ".join(f"batch {b}: {s[-1]:.2f} images/s" for b, s in speeds.items())
            )
        medians = {b: statistics.median(s) for b, s in speeds.items()}
        print(
            "median: "
            + ", ".join(f"batch {b}: {m:.2f} images/s" for b, m in medians.items())
            + f"; batch 4 / batch 1 = {medians[4] / medians[1]:.2f}"
        )


if __name__ == "__main__":
    main()
