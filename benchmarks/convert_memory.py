"""Peak memory of `glipv2 convert` on a full-size synthetic official checkpoint.

Builds a GLIP checkpoint with the official names and shapes (`shared/reference/<arch>_state_dict_shapes.tsv`),
random float32 values and the true derived buffers (relative position indices and cell anchors,
as our model computes them, named with `ours_to_official`), saved like the released files
(`{"model": state_dict}`, `module.` keys). Then converts it in fresh subprocesses and reports each
one's peak RSS (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` of a lean wrapper process whose only
child it is) next to the checkpoint's size:

* `import`: a child that only imports glipv2.convert (the floor: torch alone is ~0.5 GB);
* `convert`: `convert_checkpoint` (meta-device model, mmapped source, streamed safetensors);
* `save_file` (with --compare): the same but writing with `safetensors.torch.save_file`;
* `naive` (with --compare): a randomly initialised real model + `load_state_dict` + `save_pretrained`.

    python benchmarks/convert_memory.py [--arch glip_t] [--compare] [--workdir DIR]

Needs about 2x the checkpoint's size on disk (GLIP-T: ~1.9 GB) and a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import glipv2
from glipv2.convert.synthetic import read_state_dict_shapes, synthetic_official_state_dict

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"

# Each child converts argv[1] (checkpoint) into argv[2] (folder) with preset argv[3].
CHILDREN: dict[str, str] = {
    "import": "import sys, glipv2.convert",
    "convert": """
import sys, glipv2
from glipv2.convert import convert_checkpoint
convert_checkpoint(sys.argv[1], sys.argv[2], glipv2.get_config(sys.argv[3]))
""",
    "save_file": """
import sys, glipv2
from safetensors.torch import save_file
from glipv2.convert import checkpoint, convert_checkpoint
def write(path, tensors, metadata=None):
    save_file(dict(tensors), str(path), metadata)
checkpoint.write_safetensors = write
convert_checkpoint(sys.argv[1], sys.argv[2], glipv2.get_config(sys.argv[3]))
""",
    "naive": """
import sys, glipv2
from glipv2 import GLIPv2
from glipv2.convert import convert_state_dict, load_official_checkpoint
config = glipv2.get_config(sys.argv[3])
model = GLIPv2(config, load_text_weights=False)
state, report = convert_state_dict(load_official_checkpoint(sys.argv[1]), model, config)
model.load_state_dict(state, strict=True)
model.save_pretrained(sys.argv[2])
""",
}


# A lean interpreter (no torch) that runs one work process and reports its peak RSS in KiB. The
# indirection matters: a child forked from this (large, torch-importing) script would count the
# parent's pages, shared at fork time, in its own ru_maxrss.
MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_rss_of_child(code: str, args: list[str]) -> tuple[float, float]:
    """(peak RSS in bytes, wall seconds) of one fresh `python -c code args...`."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-c", code, *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return float(done.stdout.split()[-1]) * 1024.0, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="glip_t", choices=["glip_t", "glip_t_a", "glip_l"])
    parser.add_argument(
        "--compare", action="store_true", help="also measure save_file and the naive conversion"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to put the ~2x checkpoint-size files"
    )
    args = parser.parse_args()
    tsv = REFERENCE_DIR / f"{args.arch}_state_dict_shapes.tsv"
    if not tsv.is_file():
        sys.exit(f"{tsv}: not found (the shared reference folder is expected next to the repository)")

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="convert_memory_") as tmp:
        work = Path(tmp)
        src = work / f"{args.arch}_synthetic.pth"
        state = synthetic_official_state_dict(read_state_dict_shapes(tsv), glipv2.get_config(args.arch))
        n_tensors = len(state)
        torch.save({"model": dict(state), "iteration": 0}, src)
        del state
        gc.collect()
        size = src.stat().st_size
        print(f"checkpoint: {args.arch}, {n_tensors} tensors, {size / 2**30:.3f} GiB ({size} bytes)")

        modes = ["import", "convert"] + (["save_file", "naive"] if args.compare else [])
        baseline = None
        for mode in modes:
            out = work / f"out_{mode}"
            peak, seconds = peak_rss_of_child(CHILDREN[mode], [str(src), str(out), args.arch])
            if mode == "import":
                baseline = peak
                print(f"{mode:9s}: peak RSS {peak / 2**30:.3f} GiB ({seconds:.1f} s)")
                continue
            assert baseline is not None
            above = peak - baseline
            print(
                f"{mode:9s}: peak RSS {peak / 2**30:.3f} GiB = {peak / size:.2f} x checkpoint; above the "
                f"import floor {above / 2**30:.3f} GiB = {above / size:.2f} x ({seconds:.1f} s)"
            )


if __name__ == "__main__":
    main()
