"""Modulated deformable conv on CPU: torchvision's `deform_conv2d` vs the `grid_sample` version.

1. The op alone: a 64-channel 44×44 map, batch 4, forward + backward and forward alone, 5 runs each,
   the two implementations interleaved over 2 rounds.
2. A `glipv2_tiny` training step (forward, all losses, backward, AdamW), batch 4 of ShapesWorld images
   resized to a shorter side of 288, the two models interleaved step by step over 4 rounds.

    python benchmarks/deform_conv.py [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torchvision.ops import deform_conv2d

from glipv2 import GLIPv2Processor, build_model
from glipv2.data.collate import GroundingCollator, SafeDataset
from glipv2.data.grounding import build_grounding_dataset
from glipv2.data.mlm import MaskingVocab
from glipv2.data.shapes_world import generate_shapes_world
from glipv2.data.transforms import build_train_transforms
from glipv2.engine.train_config import TrainConfig
from glipv2.engine.trainer import Trainer
from glipv2.modeling.deform_conv import deform_conv2d_grid_sample


def op_times(runs: int = 5) -> dict[str, tuple[float, float]]:
    torch.manual_seed(0)
    x = torch.randn(4, 64, 44, 44, requires_grad=True)
    offset = torch.randn(4, 18, 44, 44, requires_grad=True)
    mask = torch.rand(4, 9, 44, 44, requires_grad=True)
    weight = torch.randn(64, 64, 3, 3, requires_grad=True)
    bias = torch.randn(64, requires_grad=True)
    ops = {
        "torchvision": lambda: deform_conv2d(x, offset, weight, bias, stride=1, padding=1, mask=mask),
        "grid_sample": lambda: deform_conv2d_grid_sample(x, offset, weight, bias, 1, 1, mask),
    }
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in ops}
    for _ in range(2):
        for name, op in ops.items():
            t0 = time.perf_counter()
            for _ in range(runs):
                op().sum().backward()
            t1 = time.perf_counter()
            with torch.no_grad():
                for _ in range(runs):
                    op()
            out[name].append(((t1 - t0) / runs, (time.perf_counter() - t1) / runs))
    return {k: (min(v[0] for v in vs), min(v[1] for v in vs)) for k, vs in out.items()}


def step_times(rounds: int, data: Path) -> dict[str, list[float]]:
    generate_shapes_world(data, 32, seed=0)
    cfg = TrainConfig(
        max_steps=100, batch_size=4, min_sizes=(288,), max_size=512, warmup_steps=2, max_categories=36
    )
    trainers = {}
    for impl in ("torchvision", "grid_sample"):
        torch.manual_seed(0)
        model = build_model("glipv2_tiny", deformable_conv_impl=impl)
        dataset = SafeDataset(
            build_grounding_dataset(data / "instances.json", data / "images", max_categories=36),
            build_train_transforms(cfg.min_sizes, cfg.max_size),
        )
        processor = GLIPv2Processor.from_config(model.config)
        # the MLM corruption is the collator's now (as `glipv2 train` sets it up): L_mlm stays in the step
        collator = GroundingCollator(processor, MaskingVocab.from_tokenizer(processor.tokenizer))
        trainer = Trainer(model, dataset, collator, cfg, data / f"run_{impl}")
        trainers[impl] = (trainer, trainer.batches())
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(rounds):
        for impl, (trainer, batches) in trainers.items():
            batch = next(batches)
            t0 = time.perf_counter()
            trainer.train_step([batch])
            times[impl].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(2)
    ops = op_times()
    for name, (both, forward) in ops.items():
        print(
            f"op {name:12s} forward+backward {both * 1000:.0f} ms, forward {forward * 1000:.0f} ms (best of 2 rounds)"
        )
    print(
        f"op ratio torchvision/grid_sample: forward+backward {ops['torchvision'][0] / ops['grid_sample'][0]:.2f}, "
        f"forward {ops['torchvision'][1] / ops['grid_sample'][1]:.2f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        times = step_times(args.rounds, Path(tmp))
    for impl, ts in times.items():
        print(
            f"train step {impl:12s} "
            + ", ".join(f"{t:.2f}" for t in ts)
            + f" s; median of rounds 2-{args.rounds}: {statistics.median(ts[1:]):.2f} s"
        )
    print(
        "step ratio torchvision/grid_sample per round: "
        + ", ".join(f"{a / b:.2f}" for a, b in zip(times["torchvision"], times["grid_sample"]))
    )


if __name__ == "__main__":
    main()
