"""`--threads N`: the CPU threads torch uses for one command (torch-free until it is applied)."""

from __future__ import annotations

import argparse


def thread_count(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be >= 1")
    return value


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        metavar="N",
        help="CPU threads for torch's kernels (default: torch's choice, one per core; under torchrun "
        "give each process its share)",
    )


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count when `--threads` was given."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
