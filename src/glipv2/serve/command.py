"""`glipv2 serve`: the web demo on the shipped weights (default) or any `--model`.

The model is loaded once, before the server starts, and shared by every request; a bad `--model`,
port or device is one line on stderr (exit code 2) before anything listens. Ctrl-C stops the server.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils.allocator import reuse_freed_memory
from ..utils.shipped import DEFAULT_SHIPPED_MODEL
from ..utils.threads import add_threads_option, apply_threads

if TYPE_CHECKING:
    from .service import DemoService

EXIT_BAD_INPUT = 2


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_SHIPPED_MODEL,
        metavar="NAME_OR_DIR",
        help=f"a model folder, a hub id, an official .pth, a shipped model or a preset (default: the shipped "
        f"{DEFAULT_SHIPPED_MODEL})",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0: any free port)")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    add_threads_option(p)
    p.add_argument(
        "--threshold", type=float, default=None, help="the sliders' start value (default: the model's)"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=2,
        metavar="N",
        help="requests the server accepts at once (default 2)",
    )
    p.add_argument(
        "--examples", type=int, default=3, metavar="N", help="ShapesWorld example images (default 3)"
    )


def run_serve(args: argparse.Namespace) -> int:
    # before gradio is imported: it would otherwise report usage to, and fetch from, the internet
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    apply_threads(args.threads)
    reuse_freed_memory()
    try:
        _check_call(args)
        import gradio  # noqa: F401  (the optional extra: before the model takes seconds to load)
    except ValueError as err:
        print(f"glipv2 serve: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImportError:
        print("glipv2 serve: needs the web demo extra: pip install 'glipv2[demo]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        service = _load_service(args)
    except ValueError as err:
        print(f"glipv2 serve: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from .app import build_app, shapes_examples, theme

    # the example images live as long as the server, in a folder of its own
    with tempfile.TemporaryDirectory(prefix="glipv2-examples-") as folder:
        examples = shapes_examples(Path(folder), args.examples) if args.examples else []
        app = build_app(service, examples)
        app.queue(default_concurrency_limit=args.concurrency)
        port = args.port or _free_port(args.host)
        try:
            app.launch(
                server_name=args.host,
                server_port=port,
                theme=theme(),
                show_error=False,
                quiet=True,
                ssr_mode=False,
                mcp_server=False,
                footer_links=[],
                prevent_thread_lock=True,
                allowed_paths=[folder],
            )
        except OSError:  # Gradio's own message names an environment variable; ours names the option
            print(
                f"glipv2 serve: cannot listen on {args.host}:{port} (in use, or not this machine's address)",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        print(
            f"glipv2 serve: {service.model_name} at http://{args.host}:{port}  (Ctrl-C stops)",
            file=sys.stderr,
        )
        try:
            app.block_thread()  # until Ctrl-C or SIGTERM
        finally:
            app.close()
    return 0


def _check_call(args: argparse.Namespace) -> None:
    if not 1 <= args.concurrency <= 64:
        raise ValueError(f"--concurrency {args.concurrency}: must lie in [1, 64]")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold {args.threshold}: must lie in [0, 1]")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: must lie in [0, 65535]")
    if not 0 <= args.examples <= 20:
        raise ValueError(f"--examples {args.examples}: must lie in [0, 20]")


def _load_service(args: argparse.Namespace) -> DemoService:
    """The model, loaded once; imports torch (kept out of `glipv2 --help`)."""
    from ..inference.predictor import Predictor
    from ..loading import load_model_option
    from .service import DemoService

    model = load_model_option(args.model, args.device)  # a ValueError of one line
    predictor = Predictor(model)
    # the sliders start at --threshold, or at the model's own (`GLIPv2Processor.box_threshold`)
    threshold = predictor.resolve_threshold(args.threshold)
    # a folder is shown by its name (the page need not show where the server keeps its files)
    name = Path(args.model).name if Path(args.model).is_dir() else args.model
    return DemoService(predictor, name, threshold)


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
