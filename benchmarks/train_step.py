"""Training-step time of the shipped tiny recipe: this checkout against a baseline checkout.

Both packages are imported into one process (the baseline under the name `glipv2_baseline`), build
`glipv2_tiny` with the recipe's model overrides from the same seed, get the same ShapesWorld batches
(the recipe's batch size, a fixed 256 px input) and run `Trainer.train_step` on them interleaved,
step by step (this CPU's speed drifts up to 2× within minutes, so only a ratio inside one process
means anything).

    python benchmarks/train_step.py --baseline-src /path/to/old/checkout/src [--steps 12]

Prints per-step medians and the ratio current / baseline.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from glipv2.utils.allocator import reuse_freed_memory

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "glipv2_tiny_shapes.yaml"


def import_baseline(src: Path) -> Any:
    """The package under `src/glipv2` as `glipv2_baseline` (its imports are relative)."""
    link_dir = Path(tempfile.mkdtemp(prefix="glipv2_baseline_"))
    (link_dir / "glipv2_baseline").symlink_to((src / "glipv2").resolve(), target_is_directory=True)
    sys.path.insert(0, str(link_dir))
    return importlib.import_module("glipv2_baseline")


def build_trainer(package: str, data: Path, out: Path, recipe: dict[str, Any]) -> tuple[Any, list[Any]]:
    """A trainer of `package` (glipv2 or glipv2_baseline) on the recipe, and 4 fixed batches."""
    modeling = importlib.import_module(f"{package}.modeling.registry")
    collate = importlib.import_module(f"{package}.data.collate")
    grounding = importlib.import_module(f"{package}.data.grounding")
    train_config = importlib.import_module(f"{package}.engine.train_config")
    trainer_module = importlib.import_module(f"{package}.engine.trainer")
    processing = importlib.import_module(f"{package}.processing.processor")
    config = train_config.TrainConfig(**recipe)
    torch.manual_seed(0)
    model = modeling.build_model("glipv2_tiny", **config.model_overrides)
    if hasattr(processing.GLIPv2Processor, "for_model"):
        processor = processing.GLIPv2Processor.for_model(model)
    else:  # the layout before the processor owned the tokenizer
        processor = processing.GLIPv2Processor.from_config(model.config, model.tokenizer)
    dataset = collate.SafeDataset(
        grounding.build_grounding_dataset(
            data / "instances.json",
            data / "images",
            max_categories=config.max_categories,
            seed=0,
            with_masks=model.config.mask_head,
        )
    )
    collator = collate.GroundingCollator(processor)
    trainer = trainer_module.Trainer(model, dataset, collator, config, out)
    batches = [collator([dataset[i] for i in range(b * 4, b * 4 + 4)]) for b in range(4)]
    return trainer, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True, help="the baseline checkout's src folder")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as `glipv2 train` does (for both packages: one process)
    import_baseline(args.baseline_src)
    from glipv2.data.shapes_world import generate_shapes_world

    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.update(min_sizes=[256], max_size=352, flip_probability=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shapes"
        generate_shapes_world(data, 16, 0, split="train")
        runs = {
            name: build_trainer(name, data, Path(tmp) / name, recipe)
            for name in ("glipv2", "glipv2_baseline")
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for step in range(args.steps + 1):
            for name, (trainer, batches) in runs.items():
                start = time.perf_counter()
                trainer.train_step([batches[step % len(batches)]])
                if step:  # the first step of each warms the allocator and caches
                    times[name].append(time.perf_counter() - start)
    current, baseline = statistics.median(times["glipv2"]), statistics.median(times["glipv2_baseline"])
    print(
        f"median step: current {current:.3f} s, baseline {baseline:.3f} s over {args.steps} interleaved steps"
    )
    print(f"ratio current / baseline: {current / baseline:.3f}")


if __name__ == "__main__":
    main()
