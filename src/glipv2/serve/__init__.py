"""`glipv2 serve`: the web demo (Gradio, the optional extra `glipv2[demo]`)."""

from __future__ import annotations

import argparse


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `serve` sub-command; importing this module imports neither torch nor gradio."""
    from .command import add_serve_arguments, run_serve

    p = subparsers.add_parser("serve", help="the web demo (Gradio): all six tasks in a browser")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)
    return p
