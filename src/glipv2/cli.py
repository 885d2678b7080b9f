"""Command line: `glipv2 models | demo | predict | convert | data | train | eval`, and `glipv2 --version`.
Each command lives beside the code it drives; every error a user sees is one line `glipv2 COMMAND: ...`."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import TextIO

from . import __version__
from .modeling import list_models
from .modeling.registry import describe_model


def _models(_: argparse.Namespace) -> int:
    for name in list_models():
        print(f"{name:12s} {describe_model(name)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoError, run_demo

    try:
        run_demo(args.model, weights=args.weights, out=args.out)
    except DemoError as err:
        print(f"glipv2 demo: {err}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .convert.command import add_convert_parser
    from .data.command import add_data_parser
    from .engine.command import add_train_parser
    from .evaluation.command import add_eval_parser
    from .inference.command import add_predict_parser

    parser = argparse.ArgumentParser(prog="glipv2", description="GLIPv2 in plain PyTorch")
    parser.add_argument("--version", action="version", version=f"glipv2 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the named model variants").set_defaults(func=_models)
    demo = sub.add_parser(
        "demo", help="detection and grounding with the shipped tiny weights on ShapesWorld images"
    )
    demo.add_argument(
        "--weights", metavar="DIR", help="a model folder (default: weights/glipv2_tiny_shapes when present)"
    )
    demo.add_argument(
        "--out", default="demo_out", metavar="DIR", help="where the JSON and PNGs go (default demo_out)"
    )
    demo.add_argument(
        "--model",
        default="glipv2_tiny",
        choices=list_models(),
        help="preset for the random-weights forward-pass summary when no weights are found",
    )
    demo.set_defaults(func=_demo)
    add_predict_parser(sub)
    add_convert_parser(sub)
    add_data_parser(sub)
    add_train_parser(sub)
    add_eval_parser(sub)
    return parser


def _one_line_warnings(command: str) -> None:
    """Warnings of glipv2's own (e.g. `PromptWarning`) as one line `glipv2 COMMAND: warning: ...`
    instead of Python's two-line format with a source line; other libraries' stay as they are."""
    default = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if category.__module__.startswith("glipv2"):
            print(f"glipv2 {command}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = warnings.showwarning
    _one_line_warnings(args.command)
    try:
        return int(args.func(args))
    # Ctrl-C where a command does not handle it itself (loading a model, writing): one line, no traceback
    except KeyboardInterrupt:
        print(f"glipv2 {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
