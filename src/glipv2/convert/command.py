"""`glipv2 convert`: an official GLIP `.pth` -> a glipv2 model folder.

    glipv2 convert SRC.pth OUT_DIR [--arch PRESET | --official-config CFG.yaml]
                   [--text-config BERT.json] [--allow-partial] [--allow-pickle] [--overwrite]

Without --arch / --official-config the architecture comes from the released file name
(`glip_tiny_model_o365_goldg.pth` -> glip_t, ...). Problems go to stderr, one per line, with
exit status 2, each `glipv2 convert: ...`. OUT_DIR is checked before the checkpoint is read: it
must not be or hold an input, and `--overwrite` replaces only a glipv2 model folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..modeling.registry import list_models  # torch-free: the parser lists the presets

EXIT_PROBLEM = 2


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `convert` sub-command to an `argparse` sub-parsers object; the handler is stored
    as the `func` default (`args.func(args) -> exit status`)."""
    parser = subparsers.add_parser(
        "convert",
        help="convert an official GLIP checkpoint (.pth) into a glipv2 model folder",
        description="Convert an official GLIP checkpoint ({'model': state_dict}, keys with 'module.') into a "
        "folder that GLIPv2.from_pretrained loads (config.json, model.safetensors, "
        "processor_config.json, tokenizer/).",
    )
    parser.add_argument("src", metavar="SRC.pth", help="the official checkpoint")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the model folder to write (must not exist)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--arch",
        choices=list_models(),
        metavar="PRESET",
        help="the checkpoint's architecture as a preset: glip_t, glip_t_a, glip_l "
        "(default: from the released file name)",
    )
    which.add_argument(
        "--official-config",
        metavar="CFG.yaml",
        help="the checkpoint's GLIP config (the full cfg.dump() YAML)",
    )
    parser.add_argument(
        "--text-config",
        metavar="BERT.json",
        help="the checkpoint's BERT config (Hugging Face BertConfig JSON), if not bert-base-uncased",
    )
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="convert despite problems; tensors the checkpoint lacks keep their random init",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="fully unpickle the file if weights-only loading fails (runs code: trusted files only)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    parser.set_defaults(func=run_convert)
    return parser


def run_convert(args: argparse.Namespace) -> int:
    """Handler of `glipv2 convert`: 0 on success, 2 with one line per problem on stderr."""
    # here, not at the top: `glipv2 convert --help` must not wait for torch
    from .checkpoint import check_output_folder, convert_checkpoint
    from .hub import official_checkpoint_config
    from .official import ConversionError

    try:
        # before reading anything: OUT_DIR must not hold (or be) one of the inputs
        inputs = [Path(p) for p in (args.src, args.official_config, args.text_config) if p]
        check_output_folder(Path(args.out_dir), inputs, args.overwrite)
        config = official_checkpoint_config(
            Path(args.src).name, args.arch, args.official_config, args.text_config
        )
        report = convert_checkpoint(
            args.src,
            args.out_dir,
            config,
            allow_partial=args.allow_partial,
            allow_pickle=args.allow_pickle,
            overwrite=args.overwrite,
        )
    except ConversionError as err:
        _print_problems([f"{err.source}: {p}" for p in err.problems])
        return EXIT_PROBLEM
    except ValueError as err:
        _print_problems(str(err).splitlines())
        return EXIT_PROBLEM
    for problem in report.problems():
        print(f"glipv2 convert: warning: {problem}", file=sys.stderr)
    print(
        f"converted {len(report.converted)} tensors, ignored {len(report.ignored)}, "
        f"derived {len(report.derived)} (recomputed buffers, checked equal)"
        + (f", left at random init {len(report.missing)}" if report.missing else "")
    )
    print(f"wrote {args.out_dir} ({config.name}); load it with GLIPv2.from_pretrained({str(args.out_dir)!r})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`glipv2 convert ...` on its own (for tests and `python -m glipv2.convert.command`)."""
    parser = argparse.ArgumentParser(prog="glipv2")
    add_convert_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _print_problems(lines: list[str]) -> None:
    for line in lines:
        if line.strip():
            print(f"glipv2 convert: {line.strip()}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
