"""Eval-forward latency of `glip_t` vs transformers' Grounding DINO on this machine.

GLIP-T at batch 1, 800×1333, the 80 COCO class names as prompt, 2 threads; in the same process,
interleaved run by run (this CPU's speed drifts up to 2× within minutes), Grounding DINO from its
default config with random weights, and an fp32 matmul measuring the machine's peak each round.

    python benchmarks/latency.py [--rounds 3] [--height 800 --width 1333] [--no-gdino]

Prints per-model medians, peak RSS during a forward, FLOPs per forward (FlopCounterMode, plus
the modulated deformable convs by formula since torchvision's op is not counted), achieved
GFLOP/s as a fraction of the measured peak, the ratio ours / Grounding DINO, and where the time
of one GLIP-T forward goes (deformable convs included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

import glipv2
from glipv2.modeling import deform_conv as deform_conv_module  # the module whose deform_conv2d DyConv calls
from glipv2.processing.text import load_tokenizer

COCO_CLASSES = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]
PROMPT = ". ".join(COCO_CLASSES)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss() -> Iterator[dict[str, int]]:
    """Samples the resident set every 5 ms; yields a dict that gets 'peak' and 'base'."""
    result = {"base": rss_bytes(), "peak": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result["peak"] = max(result["peak"], rss_bytes())
            stop.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["peak"] = max(result["peak"], rss_bytes())


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


@contextmanager
def deform_conv_flops() -> Iterator[list[int]]:
    """Count 2·Cin·9·Cout·Hout·Wout per modulated deformable conv call (torchvision's op is
    invisible to FlopCounterMode) while the context is open."""
    total = [0]
    original = deform_conv_module.deform_conv2d

    def counting(
        x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, *args: Any, **kw: Any
    ) -> torch.Tensor:
        out = original(x, offset, weight, *args, **kw)
        cout, cin, kh, kw_ = weight.shape
        total[0] += 2 * cin * kh * kw_ * cout * out.shape[0] * out.shape[2] * out.shape[3]
        return out

    deform_conv_module.deform_conv2d = counting
    try:
        yield total
    finally:
        deform_conv_module.deform_conv2d = original


def time_breakdown(model: glipv2.GLIPv2, run: Callable[[], Any]) -> dict[str, float]:
    """Seconds spent per part of one forward (forward pre/post hooks; deform convs by wrapping)."""
    spent: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    blocks = model.core.fusion.blocks
    parts = {
        "swin backbone": [model.core.backbone],
        "fpn": [model.core.fpn],
        "text encoder": [model.text_encoder],
        "fusion blocks": [b.fusion for b in blocks if b.fusion is not None],
        "head BERT layers": [b.text_layer for b in blocks if b.text_layer is not None],
        "DyConv blocks": [b.dyconv for b in blocks],
    }
    for name in [*parts, "  of which deformable convs"]:
        spent[name] = 0.0  # fixes the print order

    def start(module: torch.nn.Module, _args: Any) -> None:
        starts[id(module)] = time.perf_counter()

    def stop_for(name: str) -> Callable[..., None]:
        def stop(module: torch.nn.Module, _args: Any, _out: Any) -> None:
            spent[name] += time.perf_counter() - starts[id(module)]

        return stop

    handles = []
    for name, modules in parts.items():
        for m in modules:
            handles.append(m.register_forward_pre_hook(start))
            handles.append(m.register_forward_hook(stop_for(name)))
    original = deform_conv_module.deform_conv2d

    def timed(*args: Any, **kw: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        out = original(*args, **kw)
        spent["  of which deformable convs"] += time.perf_counter() - t0
        return out

    deform_conv_module.deform_conv2d = timed
    t0 = time.perf_counter()
    try:
        run()
    finally:
        deform_conv_module.deform_conv2d = original
        for h in handles:
            h.remove()
    spent["total"] = time.perf_counter() - t0
    return dict(spent)


def build_glip(height: int, width: int) -> tuple[torch.nn.Module, Callable[[], Any]]:
    model = glipv2.build_model("glip_t").eval()
    tokenizer = load_tokenizer(model.config.tokenizer)
    tok = tokenizer([PROMPT], padding="max_length", max_length=256, truncation=True, return_tensors="pt")
    pixel_values = torch.randn(1, 3, height, width)

    def run() -> Any:
        with torch.no_grad():
            return model(pixel_values, tok["input_ids"], tok["attention_mask"])

    print(
        f"glip_t: {model.num_parameters() / 1e6:.2f} M params; prompt of {int(tok['attention_mask'].sum())} "
        f"tokens padded to 256",
        flush=True,
    )
    return model, run


def build_gdino(height: int, width: int) -> tuple[torch.nn.Module, Callable[[], Any]]:
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    tokenizer = load_tokenizer("bert-base-uncased")
    prompt = ". ".join(COCO_CLASSES) + "."
    tok = tokenizer([prompt], truncation=True, max_length=256, return_tensors="pt")
    pixel_values = torch.randn(1, 3, height, width)

    def run() -> Any:
        with torch.no_grad():
            return model(
                pixel_values=pixel_values, input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
            )

    print(
        f"Grounding DINO: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params; prompt of "
        f"{tok['input_ids'].shape[1]} tokens",
        flush=True,
    )
    return model, run


def count_flops(run: Callable[[], Any]) -> tuple[float, float]:
    """(all FLOPs, of which modulated deformable convs) of one call."""
    with deform_conv_flops() as deform, FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() + deform[0], float(deform[0])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--no-gdino", action="store_true", help="time glip_t alone")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {args.height}x{args.width}")

    models: dict[str, tuple[torch.nn.Module, Callable[[], Any]]] = {
        "glip_t": build_glip(args.height, args.width)
    }
    if not args.no_gdino:
        models["grounding_dino"] = build_gdino(args.height, args.width)

    counted = {name: count_flops(run) for name, (_, run) in models.items()}
    flops = {name: total for name, (total, _) in counted.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    peaks: dict[str, float] = dict.fromkeys(models, 0.0)
    growth: dict[str, float] = dict.fromkeys(models, 0.0)
    matmul: list[float] = []
    for r in range(args.rounds):
        matmul.append(matmul_gflops())
        for name, (_, run) in models.items():
            with peak_rss() as mem:
                t0 = time.perf_counter()
                run()
                elapsed = time.perf_counter() - t0
            times[name].append(elapsed)
            peaks[name] = max(peaks[name], mem["peak"] / 2**30)
            growth[name] = max(growth[name], (mem["peak"] - mem["base"]) / 2**30)
            print(
                f"round {r + 1}: {name:15s} {elapsed:6.2f} s  (matmul peak now {matmul[-1]:.0f} GFLOP/s)",
                flush=True,
            )

    peak = statistics.median(matmul)
    print(
        f"\nfp32 matmul 2048² peak: median {peak:.0f} GFLOP/s (rounds: {', '.join(f'{m:.0f}' for m in matmul)})"
    )
    print(
        "peak RSS: of the whole process (every model loaded) during that model's forward; "
        "+fwd: its rise over the RSS before the forward"
    )
    print(
        f"{'model':15s} {'median s':>9s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'of peak':>8s} {'peak RSS GiB':>13s} "
        f"{'+fwd GiB':>9s}"
    )
    for name in models:
        med = statistics.median(times[name])
        rate = flops[name] / 1e9 / med
        print(
            f"{name:15s} {med:9.2f} {flops[name] / 1e9:8.0f} {rate:8.1f} {rate / peak:8.0%} {peaks[name]:13.2f} "
            f"{growth[name]:9.2f}"
        )
    if "grounding_dino" in models:
        ratios = [a / b for a, b in zip(times["glip_t"], times["grounding_dino"])]
        print(
            f"ratio glip_t / grounding_dino (per round, interleaved): "
            f"{', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}"
        )
    print(
        f"glip_t: {counted['glip_t'][1] / 1e9:.0f} of its GFLOP are modulated deformable convs (by formula)"
    )

    model, run = models["glip_t"]
    breakdown = time_breakdown(model, run)
    total = breakdown.pop("total")
    print(f"\nglip_t time breakdown of one forward ({total:.2f} s):")
    for name, seconds in breakdown.items():
        print(f"  {name:28s} {seconds:6.2f} s  {seconds / total:5.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
