"""Command line: `glipv2 models | demo | predict | convert | data | train | eval | serve`, and
`glipv2 --version`. Each command lives beside the code it drives; every error a user sees is one line
`glipv2 COMMAND: ...`.

Building the parser imports no command module (and so no torch, transformers or PIL): each
command's sub-parser is filled in by its own `add_*_parser` only when that command is parsed or its
help is shown, so `glipv2 --help` and `glipv2 models` answer at once."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from typing import Any, TextIO

from . import __version__
from .modeling.registry import describe_model, list_models
from .utils.shipped import DEFAULT_SHIPPED_MODEL, list_shipped_models, shipped_model_dir

# command -> (module, the function that adds its sub-parser, the one-line help `glipv2 --help` lists).
# The help repeats the one the module's own `add_*_parser` gives (tests/test_lazy_imports.py checks
# that they agree): showing the command list must not import the module.
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "predict": (
        ".inference.command",
        "add_predict_parser",
        "detect classes, ground a caption's phrases, answer a question or describe images",
    ),
    "convert": (
        ".convert.command",
        "add_convert_parser",
        "convert an official GLIP checkpoint (.pth) into a glipv2 model folder",
    ),
    "data": (".data.command", "add_data_parser", "generate synthetic datasets"),
    "train": (
        ".engine.command",
        "add_train_parser",
        "train or fine-tune on COCO-json / grounding-json data (default: glipv2_tiny on ShapesWorld)",
    ),
    "eval": (
        ".evaluation.command",
        "add_eval_parser",
        "score a model on COCO, LVIS, ODinW, Flickr30k, RefCOCO, VQA or COCO captions",
    ),
}


class _Into:
    """Stands in for the sub-parsers action a command's `add_*_parser(subparsers)` expects: its one
    `add_parser` call returns the already registered (lazy) parser, given the real description."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        # `help` was given at registration; the rest describes the sub-command's own --help
        for key in ("description", "epilog", "usage", "formatter_class", "argument_default"):
            if key in kwargs:
                setattr(self.parser, key, kwargs[key])
        return self.parser


class LazyCommandParser(argparse.ArgumentParser):
    """A sub-parser whose arguments are added by `loader` = (module, function) the first time it
    parses or formats its help; without a loader, a plain `ArgumentParser`."""

    def __init__(self, *args: Any, loader: tuple[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loader = loader

    def load(self) -> argparse.ArgumentParser:
        """Fill in the arguments now (importing the command's module); idempotent."""
        if self._loader is not None:
            module, function = self._loader
            self._loader = None
            getattr(importlib.import_module(module, __package__), function)(_Into(self))
        return self

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        self.load()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.load()
        return super().format_usage()

    def format_help(self) -> str:
        self.load()
        return super().format_help()


def _shipped_description(name: str) -> str:
    """What a shipped model folder holds, from its config.json alone (no torch)."""
    folder = shipped_model_dir(name)
    try:
        config = json.loads((folder / "config.json").read_text()) if folder else {}  # type: ignore[operator]
    except (OSError, ValueError):
        config = {}
    heads = [
        label
        for key, label in (("mask_head", "masks"), ("vqa_answers", "VQA"), ("caption_head", "captions"))
        if config.get(key)
    ]
    base = config.get("name", "?")
    default = ", the default of `glipv2 demo` and `glipv2 serve`" if name == DEFAULT_SHIPPED_MODEL else ""
    return (
        f"TRAINED weights shipped with glipv2 ({base} on ShapesWorld: detection, grounding"
        + "".join(f", {h}" for h in heads)
        + f"{default})"
    )


def _models(_: argparse.Namespace) -> int:
    presets, shipped = list_models(), list_shipped_models()
    width = max(len(n) for n in [*presets, *shipped])
    print("presets (RANDOM weights: build_model(NAME); as --model NAME they say so on stderr):")
    for name in presets:
        print(f"  {name:{width}s}  {describe_model(name)}")
    print("shipped models (trained weights: load_model(NAME), GLIPv2.from_pretrained(NAME), --model NAME):")
    for name in shipped:
        print(f"  {name:{width}s}  {_shipped_description(name)}")
    if not shipped:
        print("  (none in this installation)")
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
    """The whole command line; imports no command module (see the module docstring)."""
    from .serve import add_serve_parser  # torch-free: it imports its implementation when run

    parser = argparse.ArgumentParser(prog="glipv2", description="GLIPv2 in plain PyTorch")
    parser.add_argument("--version", action="version", version=f"glipv2 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=LazyCommandParser)
    sub.add_parser("models", help="list the named model variants and the shipped models").set_defaults(
        func=_models
    )
    demo = sub.add_parser(
        "demo", help="all six tasks with the shipped tiny weights on generated ShapesWorld images"
    )
    demo.add_argument(
        "--weights",
        metavar="DIR",
        help=f"a model folder (default: the shipped {DEFAULT_SHIPPED_MODEL} weights; without them, a "
        "random-weights forward-pass summary of --model)",
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
    for name, (module, function, help_text) in LAZY_COMMANDS.items():
        sub.add_parser(name, help=help_text, loader=(module, function))
    add_serve_parser(sub)
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
