"""Modulated deformable conv on CPU (torchvision, grid_sample, gather), and the compute paths in training.

1. The op alone, the implementations interleaved over 2 rounds:
   a. `glipv2_tiny`'s size, a 64-channel 44×44 map, batch 4: forward + backward and forward alone,
      5 runs each;
   b. GLIP-T's P3 at 800×1333, a 256-channel 100×167 map, batch 1: forward alone, 2 runs each.
2. A `glipv2_tiny` training step (forward, all losses, backward, AdamW), batch 4 of ShapesWorld images
   resized to a shorter side of 288, on the reference compute path (torchvision's DCN, projected
   fusion attention, all token slots) and the fast one (the defaults), two models with the same
   weights, interleaved step by step over `--rounds` rounds.

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
from glipv2.modeling.config import COMPUTE_PATHS
from glipv2.modeling.deform_conv import deform_conv2d_gather, deform_conv2d_grid_sample
from glipv2.utils.allocator import reuse_freed_memory


def op_times(
    shape: tuple[int, int, int, int], runs: int, backward: bool
) -> dict[str, tuple[float | None, float]]:
    """Per implementation: (best forward + backward s or None, best forward s) over 2 rounds."""
    torch.manual_seed(0)
    b, c, h, w = shape
    x = torch.randn(b, c, h, w, requires_grad=backward)
    offset = (torch.randn(b, 18, h, w) * 2).requires_grad_(backward)
    mask = torch.rand(b, 9, h, w).requires_grad_(backward)
    weight = (torch.randn(c, c, 3, 3) * 0.02).requires_grad_(backward)
    bias = torch.randn(c, requires_grad=backward)
    ops = {
        "torchvision": lambda: deform_conv2d(x, offset, weight, bias, stride=1, padding=1, mask=mask),
        "grid_sample": lambda: deform_conv2d_grid_sample(x, offset, weight, bias, 1, 1, mask),
        "gather": lambda: deform_conv2d_gather(x, offset, weight, bias, 1, 1, mask),
    }
    out: dict[str, list[tuple[float | None, float]]] = {k: [] for k in ops}
    for _ in range(2):
        for name, op in ops.items():
            both = None
            if backward:
                t0 = time.perf_counter()
                for _ in range(runs):
                    op().sum().backward()
                both = (time.perf_counter() - t0) / runs
            t1 = time.perf_counter()
            with torch.no_grad():
                for _ in range(runs):
                    op()
            out[name].append((both, (time.perf_counter() - t1) / runs))
    return {
        k: (None if not backward else min(v[0] for v in vs if v[0] is not None), min(v[1] for v in vs))
        for k, vs in out.items()
    }


def step_times(rounds: int, data: Path) -> dict[str, list[float]]:
    generate_shapes_world(data, 32, seed=0)
    cfg = TrainConfig(
        max_steps=100, batch_size=4, min_sizes=(288,), max_size=512, warmup_steps=2, max_categories=36
    )
    trainers = {}
    for impl in ("reference", "fast"):
        torch.manual_seed(0)
        model = build_model("glipv2_tiny", **COMPUTE_PATHS[impl])
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
    reuse_freed_memory()  # as `glipv2 train` does
    for shape, runs, backward in (((4, 64, 44, 44), 5, True), ((1, 256, 100, 167), 2, False)):
        ops = op_times(shape, runs, backward)
        print(f"op on {'x'.join(map(str, shape))}:")
        for name, (both, forward) in ops.items():
            text = f"forward+backward {both * 1000:.0f} ms, " if both is not None else ""
            print(f"  {name:12s} {text}forward {forward * 1000:.0f} ms (best of 2 rounds)")
        base = ops["torchvision"]
        for name in ("grid_sample", "gather"):
            both, forward = ops[name]
            text = f"forward+backward {base[0] / both:.2f}, " if both is not None and base[0] else ""
            print(f"  torchvision / {name}: {text}forward {base[1] / forward:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        times = step_times(args.rounds, Path(tmp))
    for impl, ts in times.items():
        print(
            f"train step {impl:10s} "
            + ", ".join(f"{t:.2f}" for t in ts)
            + f" s; median of rounds 2-{args.rounds}: {statistics.median(ts[1:]):.2f} s"
        )
    print(
        "step ratio fast / reference per round: "
        + ", ".join(f"{b / a:.2f}" for a, b in zip(times["reference"], times["fast"]))
    )


if __name__ == "__main__":
    main()
