"""Eval latency of `glip_t` on this CPU: the fast compute path, the reference path, Grounding DINO.

GLIP-T at batch 1, one 800×1333 image, through `Predictor.predict` (pre-processing, forward,
post-processing; the text cache warm, as for every image of a folder after the first), with the 80
COCO class names and with 3 names, on

* the fast path (the default: gather DCN, folded fusion attention, real tokens only) and
* the reference path (`COMPUTE_PATHS["reference"]`: torchvision's DCN, the fusion's 2048-wide
  projections, every prompt padded to 256 slots — the official arithmetic),

one model switched between the two; in the same process and interleaved run by run (this CPU's
speed drifts up to 2× within minutes), transformers' Grounding DINO from its default config with
random weights (its forward on the same prompt), and an fp32 matmul measuring the machine's peak
each round.

    python benchmarks/latency.py [--rounds 3] [--height 800 --width 1333] [--no-gdino] [--lvis]
                                  [--allocator reuse|default]

Prints medians and per-round ratios, FLOPs per forward (FlopCounterMode; torchvision's deformable
op, which it does not see, added by formula), achieved GFLOP/s against the measured peak, peak RSS
of a fresh process running only the fast path, and where the time of one forward goes on each
path. `--lvis` adds the 1,203 LVIS names on the same image (14 chunk prompts, warm cache) on the
fast path: s/image and the time of each chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import glipv2
from glipv2 import GLIPv2Processor, Predictor
from glipv2.modeling import deform_conv as deform_conv_module  # its deform_conv2d is torchvision's
from glipv2.modeling import dyconv as dyconv_module  # the module whose modulated_deform_conv DyConv calls
from glipv2.processing.text import load_tokenizer
from glipv2.utils.allocator import reuse_freed_memory

LVIS_NAMES = Path(__file__).resolve().parents[1] / "tests" / "data" / "lvis_v1_category_names.txt"

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


THREE_CLASSES = ["person", "dog", "bicycle"]


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
def torchvision_deform_flops() -> Iterator[list[int]]:
    """Count 2·Cin·9·Cout·Hout·Wout per call of torchvision's deformable op (invisible to
    FlopCounterMode; the gather and grid_sample paths end in a matmul, which it counts)."""
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


def noise_image(height: int, width: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


class GlipRun:
    """`Predictor.predict` of one image with one vocabulary on one compute path of a shared model."""

    def __init__(self, predictor: Predictor, image: Image.Image, names: list[str], path: str) -> None:
        self.predictor, self.image, self.path = predictor, image, path
        self.vocabulary = predictor.detection_vocabulary(names)

    def __call__(self) -> Any:
        self.predictor.model.set_compute_path(self.path)
        try:
            return self.predictor.predict([self.image], [self.vocabulary], threshold=0.0)
        finally:
            self.predictor.model.set_compute_path("fast")


def time_breakdown(predictor: Predictor, run: Callable[[], Any]) -> dict[str, float]:
    """Seconds spent per part of one predict call (forward pre/post hooks; the deformable convs
    and the post-processing by wrapping)."""
    model = predictor.model
    spent: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    blocks = model.core.fusion.blocks
    parts = {
        "Swin-T backbone": [model.core.backbone],
        "FPN": [model.core.fpn],
        "text encoder (cached)": [model.text_encoder],
        "fusion blocks (cross-attention)": [b.fusion for b in blocks if b.fusion is not None],
        "head BERT layers": [b.text_layer for b in blocks if b.text_layer is not None],
        "DyConv blocks": [b.dyconv for b in blocks],
        "grounding head (S = O·Pᵀ, boxes)": [model.heads["grounding"]],
    }
    for name in [*parts, "  of which deformable convs", "post-processing"]:
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
    wrapped = [(dyconv_module, "modulated_deform_conv", "  of which deformable convs")]
    wrapped.append((predictor.processor, "post_process_detections", "post-processing"))
    originals = []
    for owner, attribute, label in wrapped:
        original = getattr(owner, attribute)
        originals.append((owner, attribute, original))

        def timed(*args: Any, _original: Any = original, _label: str = label, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = _original(*args, **kw)
            spent[_label] += time.perf_counter() - t0
            return out

        setattr(owner, attribute, timed)
    t0 = time.perf_counter()
    try:
        run()
    finally:
        for owner, attribute, original in originals:
            if owner is predictor.processor:
                delattr(owner, attribute)  # the instance attribute shadowed the method
            else:
                setattr(owner, attribute, original)
        for h in handles:
            h.remove()
    spent["total"] = time.perf_counter() - t0
    spent["rest (pre-processing, glue)"] = spent["total"] - sum(
        v for k, v in spent.items() if k not in ("total", "  of which deformable convs")
    )
    return dict(spent)


def build_gdino(height: int, width: int, names: list[str]) -> Callable[[], Any]:
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    tokenizer = load_tokenizer("bert-base-uncased")
    tok = tokenizer([". ".join(names) + "."], truncation=True, max_length=256, return_tensors="pt")
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
    return run


def count_flops(run: Callable[[], Any]) -> float:
    with torchvision_deform_flops() as deform, FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() + deform[0]


def fresh_process_peak_rss(height: int, width: int, allocator: str) -> float:
    """GiB: the high-water RSS (VmHWM) of a new interpreter that builds glip_t and predicts once on
    the fast path with the 80 names (nothing else loaded). Not ru_maxrss: Linux carries that over
    from the parent through fork + exec, so it would report this process's own peak."""
    code = (
        f"import sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); import latency; "
        f"torch.set_num_threads(2); {'latency.reuse_freed_memory(); ' if allocator == 'reuse' else ''}"
        f"latency.single_run({height}, {width}); "
        "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024 / 2**30  # VmHWM is in kB


def make_predictor() -> Predictor:
    model = glipv2.build_model("glip_t").eval()
    return Predictor(model, GLIPv2Processor.for_model(model))


def single_run(height: int, width: int) -> None:
    torch.manual_seed(0)
    GlipRun(make_predictor(), noise_image(height, width), COCO_CLASSES, "fast")()


def lvis(predictor: Predictor, image: Image.Image) -> None:
    import re

    names = [
        re.sub(r"\s*\(.*?\)", "", n).replace("_", " ").strip() for n in LVIS_NAMES.read_text().splitlines()
    ]
    run = GlipRun(predictor, image, names, "fast")
    chunk_times: list[float] = []
    original = predictor._run

    def timed(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = original(*args, **kw)
        chunk_times.append(time.perf_counter() - t0)
        return out

    predictor._run = timed  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        run()  # cold: encodes the chunk prompts
        cold = time.perf_counter() - t0
        chunk_times.clear()
        t0 = time.perf_counter()
        run()
        warm = time.perf_counter() - t0
    finally:
        del predictor._run
    lengths = [int(c.prompt.text.count(". ")) + 1 for c in run.vocabulary.chunks]
    tokens = [int(predictor.encode(c.prompt.text).attention_mask.sum()) for c in run.vocabulary.chunks]
    print(
        f"\nLVIS v1, {len(names)} names in {len(run.vocabulary.chunks)} chunk prompts, one image, fast path: "
        f"cold {cold:.1f} s, warm {warm:.1f} s per image"
    )
    print("chunk  names  tokens  warm s")
    for i, (n, t, s) in enumerate(zip(lengths, tokens, chunk_times)):
        print(f"{i + 1:5d}  {n:5d}  {t:6d}  {s:6.2f}")
    print(
        f"sum of chunks {sum(chunk_times):.1f} s; the rest (merge, threshold, NMS per chunk inside) "
        f"{warm - sum(chunk_times):.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--no-gdino", action="store_true", help="time glip_t alone")
    parser.add_argument("--lvis", action="store_true", help="also the 1,203 LVIS names (fast path)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--allocator",
        choices=("reuse", "default"),
        default="reuse",
        help="reuse: glibc keeps freed memory, as the glipv2 commands set it (utils/allocator.py); "
        "default: glibc's own settings. Process-wide: both models run under the same one",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.allocator == "reuse":
        reuse_freed_memory()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {args.height}x{args.width}, "
        f"allocator: {args.allocator}"
    )

    predictor = make_predictor()
    image = noise_image(args.height, args.width)
    print(f"glip_t: {predictor.model.num_parameters() / 1e6:.2f} M params", flush=True)
    runs: dict[str, Callable[[], Any]] = {}
    for label, names in (("80", COCO_CLASSES), ("3", THREE_CLASSES)):
        for path in ("fast", "reference"):
            runs[f"glip_t {path} {label} names"] = GlipRun(predictor, image, names, path)
    if not args.no_gdino:
        runs["grounding_dino 80 names"] = build_gdino(args.height, args.width, COCO_CLASSES)
        runs["grounding_dino 3 names"] = build_gdino(args.height, args.width, THREE_CLASSES)
    for run in runs.values():  # warm: text caches, allocator
        run()
    flops = {name: count_flops(run) for name, run in runs.items()}

    times: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, float] = dict.fromkeys(runs, 0.0)
    matmul: list[float] = []
    for r in range(args.rounds):
        matmul.append(matmul_gflops())
        for name, run in runs.items():
            with peak_rss() as mem:
                t0 = time.perf_counter()
                run()
                elapsed = time.perf_counter() - t0
            times[name].append(elapsed)
            peaks[name] = max(peaks[name], (mem["peak"] - mem["base"]) / 2**30)
            print(
                f"round {r + 1}: {name:28s} {elapsed:6.2f} s  (matmul peak {matmul[-1]:.0f} GFLOP/s)",
                flush=True,
            )

    peak = statistics.median(matmul)
    print(
        f"\nfp32 matmul 2048² peak: median {peak:.0f} GFLOP/s (rounds: {', '.join(f'{m:.0f}' for m in matmul)})"
    )
    print(f"{'run':28s} {'median s':>9s} {'GFLOP':>7s} {'GFLOP/s':>8s} {'of peak':>8s} {'RSS rise GiB':>13s}")
    for name in runs:
        med = statistics.median(times[name])
        rate = flops[name] / 1e9 / med
        print(
            f"{name:28s} {med:9.2f} {flops[name] / 1e9:7.0f} {rate:8.1f} {rate / peak:8.0%} {peaks[name]:13.2f}"
        )

    def ratios(a: str, b: str) -> str:
        per_round = [x / y for x, y in zip(times[a], times[b])]
        return f"{', '.join(f'{x:.2f}' for x in per_round)}; median {statistics.median(per_round):.2f}"

    figures: dict[str, Any] = {
        "times": times,
        "gflop": {k: v / 1e9 for k, v in flops.items()},
        "matmul": matmul,
    }
    for label in ("80", "3"):
        print(
            f"{label} names, fast / reference per round: {ratios(f'glip_t fast {label} names', f'glip_t reference {label} names')}"
        )
        if not args.no_gdino:
            print(
                f"{label} names, fast / Grounding DINO per round: "
                f"{ratios(f'glip_t fast {label} names', f'grounding_dino {label} names')}"
            )
            print(
                f"{label} names, reference / Grounding DINO per round: "
                f"{ratios(f'glip_t reference {label} names', f'grounding_dino {label} names')}"
            )
    reference_flops = flops["glip_t reference 80 names"]
    fast_median = statistics.median(times["glip_t fast 80 names"])
    print(
        f"80 names: the reference path's {reference_flops / 1e9:.0f} GFLOP of official arithmetic in the fast "
        f"path's time: {reference_flops / 1e9 / fast_median:.0f} GFLOP/s, {reference_flops / 1e9 / fast_median / peak:.0%} of peak"
    )

    for path in ("reference", "fast"):
        breakdown = time_breakdown(predictor, runs[f"glip_t {path} 80 names"])
        total = breakdown.pop("total")
        figures[f"breakdown {path}"] = breakdown | {"total": total}
        print(f"\nwhere one predict call goes, {path} path, 80 names ({total:.2f} s):")
        for name, seconds in breakdown.items():
            print(f"  {name:34s} {seconds:6.2f} s  {seconds / total:5.1%}")

    rss = fresh_process_peak_rss(args.height, args.width, args.allocator)
    figures["fresh_process_peak_rss_gib"] = rss
    print(f"\npeak RSS of a fresh process predicting once on the fast path (80 names): {rss:.2f} GiB")
    if args.lvis:
        lvis(predictor, image)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
