"""`glipv2 data shapes`: write a ShapesWorld split (images + COCO / grounding / VQA / caption files).

Bad arguments stop before any work with one line on stderr and exit code 2, never a traceback.
Ctrl-C or SIGTERM leaves the --out folder as it was (exit 130 / 143).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from ..utils.io import Interrupted, interruptible

EXIT_BAD_INPUT = 2
_SPLITS = ("train", "val", "heldout")  # kept here so building the parser imports nothing heavy


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single stderr line (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_seed = _int_at_least(0, "non-negative")


def _split(text: str) -> str:
    # validated by hand rather than with `choices`, whose message spans the usage block as well
    if text not in _SPLITS:
        raise argparse.ArgumentTypeError(f"unknown split {text!r}; expected one of {', '.join(_SPLITS)}")
    return text


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `data` (with its `shapes` sub-command) to a `glipv2` sub-command set."""
    data = subparsers.add_parser(
        "data",
        help="generate synthetic datasets",
        description="Generate synthetic grounded vision-language datasets.",
    )
    kinds = data.add_subparsers(
        dest="data_command", required=True, metavar="DATASET", parser_class=_OneLineParser
    )
    p = kinds.add_parser(
        "shapes",
        help="ShapesWorld: coloured shapes with boxes, masks, captions, refexps and VQA",
        description="Write a deterministic ShapesWorld split: DIR/images/*.png, instances.json, "
        "grounding.json, vqa_questions.json and vqa_annotations.json (VQAv2 layout) and captions.json (COCO captions). "
        "Same seed and split, same bytes.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--num-images", required=True, type=_positive_int, metavar="N", help="images to generate")
    p.add_argument("--seed", type=_seed, default=0, metavar="S", help="dataset seed (default 0)")
    p.add_argument(
        "--split",
        type=_split,
        default="train",
        metavar="{train,val,heldout}",
        help="train and val never hold the held-out colour+shape pairs; heldout holds only them "
        "(default train)",
    )
    p.set_defaults(func=run_shapes)
    return data


def run_shapes(args: argparse.Namespace) -> int:
    """Handler of `glipv2 data shapes`: generate, then print a short summary."""
    from .shapes_world import generate_shapes_world

    start = time.perf_counter()
    try:
        with interruptible():
            summary = generate_shapes_world(args.out, args.num_images, args.seed, args.split, progress=True)
    except (ValueError, OSError) as err:
        print(f"glipv2 data shapes: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Interrupted, KeyboardInterrupt) as stop:
        # the split is written into a temporary folder that the interruption removed
        stopped = stop if isinstance(stop, Interrupted) else Interrupted(signal.SIGINT)
        print(
            f"glipv2 data shapes: interrupted by {stopped.name}; nothing written ({args.out} is as it was)",
            file=sys.stderr,
        )
        return stopped.exit_code
    seconds = time.perf_counter() - start
    print(
        f"ShapesWorld {summary['split']} (seed {summary['seed']}): {summary['num_images']} images, "
        f"{summary['num_objects']} objects over {summary['categories_used']} categories, "
        f"{summary['num_refexps']} referring expressions, {summary['num_questions']} questions, "
        f"{summary['num_captions']} captions -> {summary['out_dir']} ({seconds:.1f}s)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`glipv2 data ...` on its own (for tests): returns the exit code instead of raising SystemExit."""
    parser = _OneLineParser(prog="glipv2", description="ShapesWorld data generation")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as stop:  # argparse exits on --help and on errors; report the code instead
        return int(stop.code or 0)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
