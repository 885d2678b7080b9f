"""`glipv2 predict`: detection, grounding, VQA (`--question`) or captioning (`--describe`) on image
files, written as one JSON document.

Problems with the call itself (model, prompt, threshold, sizes, an --out or --viz that would
overwrite an input or is a symlink / FIFO / device / unwritable) stop before any work; a problem
with one image (missing, unreadable, corrupt) is reported on stderr and in that image's entry,
and the other images are still processed. Either way the exit code is 2 and there is no traceback.
Ctrl-C or SIGTERM writes the images finished so far, marked `"incomplete": true`, and exits with
128 + the signal number (130, 143).

Besides the JSON, stdout gets a short aligned table of the results (`results_table`; `--quiet`
leaves it out), stderr the one-line summary.

torch, PIL and tqdm are imported by `run_predict`, not here: building the `glipv2` parser (and
`glipv2 predict --help`) must not pay for them.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.allocator import reuse_freed_memory
from ..utils.io import (
    DestinationError,
    Interrupted,
    atomic_path,
    atomic_write_json,
    check_destination,
    check_not_special,
    interruptible,
)
from ..utils.threads import add_threads_option, apply_threads

if TYPE_CHECKING:
    from PIL import Image

    from .predictor import Predictor, Vocabulary

EXIT_BAD_INPUT = 2
# rows of the stdout table per image; the rest is counted ("… 12 more"), the JSON has them all
TABLE_ROWS_PER_IMAGE = 5


def add_predict_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="detect classes, ground a caption's phrases, answer a question or describe images",
        description="Open-vocabulary detection (--classes), phrase grounding (--caption), visual question "
        "answering (--question) or captioning (--describe) on image files: the results go to --out as "
        "JSON, and a short table of them to stdout.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument(
        "--model",
        required=True,
        metavar="NAME_OR_DIR",
        help="a model folder (save_pretrained / glipv2 convert), a shipped model (glipv2_tiny_shapes), "
        "a hub id, or a preset (random weights)",
    )
    task = p.add_mutually_exclusive_group(required=True)
    task.add_argument("--classes", metavar="A,B,C", help="comma-separated class names (detection)")
    task.add_argument("--caption", metavar="TEXT", help="a sentence whose phrases to ground")
    task.add_argument("--question", metavar="TEXT", help="a question to answer about each image (VQA head)")
    task.add_argument(
        "--describe", action="store_true", help="generate a caption for each image (caption head)"
    )
    p.add_argument(
        "--phrases",
        nargs="+",
        metavar="P",
        help="phrases of the caption to ground (default: its pieces between punctuation)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="keep detections scoring above this (default: the model's own, box_threshold in its "
        "processor_config.json; 0.5 when it has none)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--size",
        metavar="SHORT,LONG",
        help="resize the shorter side to SHORT, the longer to at most LONG (default: the model's, 800,1333)",
    )
    size.add_argument("--no-resize", action="store_true", help="feed the images at their own size")
    p.add_argument(
        "--one-label-per-box",
        action="store_true",
        help="keep only the best label of overlapping boxes (NMS across labels; not official), for "
        "class names that share words",
    )
    p.add_argument(
        "--top-k", type=int, default=3, metavar="K", help="--question: answers per image (default 3)"
    )
    p.add_argument(
        "--beam-size", type=int, default=3, metavar="N", help="--describe: beam width, 1 = greedy (default 3)"
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=30,
        metavar="N",
        help="--describe: most tokens generated (default 30)",
    )
    p.add_argument(
        "--length-penalty",
        type=float,
        default=1.0,
        metavar="A",
        help="--describe: beams ranked by log-probability / length^A (default 1.0)",
    )
    p.add_argument("--chunk-size", type=int, metavar="N", help="class names per pass for long vocabularies")
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="forward passes batched together")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    add_threads_option(p)
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the results JSON")
    p.add_argument("--viz", metavar="DIR", help="also write an annotated PNG per image here")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no results table on stdout (the JSON and stderr only)"
    )
    p.set_defaults(func=run_predict)
    return p


class BadInput(ValueError):
    """A problem with the call, reported as one line."""


def processor_overrides(args: argparse.Namespace) -> dict[str, Any]:
    if args.no_resize:
        return {"resize": False}
    if args.size is None:
        return {}
    try:
        short, long = (int(v) for v in args.size.split(","))
    except ValueError:
        raise BadInput(f"--size {args.size!r}: expected two integers SHORT,LONG such as 800,1333") from None
    if short < 1 or long < short:
        raise BadInput(f"--size {args.size!r}: need 1 <= SHORT <= LONG")
    return {"min_size": short, "max_size": long}


def _vocabulary(args: argparse.Namespace, predictor: Predictor) -> Vocabulary | None:
    if args.question is not None or args.describe:
        if args.phrases:
            raise BadInput("--phrases goes with --caption")
        head = "vqa" if args.question is not None else "caption"
        if head not in predictor.model.heads:
            what = "VQA head (no answer vocabulary)" if head == "vqa" else "caption head"
            raise BadInput(f"--model {args.model}: has no {what}")
        if args.question is not None and not args.question.strip():
            raise BadInput("--question: empty question")
        return None
    try:
        if args.classes is not None:
            if args.phrases:
                raise BadInput("--phrases goes with --caption, not with --classes")
            return predictor.detection_vocabulary(args.classes.split(","), args.chunk_size)
        return predictor.grounding_vocabulary(args.caption, args.phrases)
    except ValueError as err:
        raise BadInput(str(err)) from None


def _check_call(args: argparse.Namespace) -> None:
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise BadInput(f"--threshold {args.threshold}: must lie in [0, 1]")
    if args.batch_size < 1:
        raise BadInput(f"--batch-size {args.batch_size}: must be >= 1")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise BadInput(f"--chunk-size {args.chunk_size}: must be >= 1")
    for name in ("top_k", "beam_size", "max_length"):
        if getattr(args, name) < 1:
            raise BadInput(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")


def _viz_names(files: list[str]) -> list[str]:
    """One PNG name per input, unique even when two inputs share a stem."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        stem = Path(f).stem or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        names.append(f"{stem}.png" if n == 0 else f"{stem}_{n}.png")
    return names


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, an --out or --viz that would overwrite an input (an image, a model
    file), that is a symlink / FIFO / device, or that cannot be written."""
    from ..loading import local_model_files

    inputs = [*args.images, *local_model_files(args.model)]
    try:
        check_destination(args.out, inputs, "--out")
        if args.viz:
            viz = Path(args.viz)
            check_destination(viz, args.images, "--viz", folder=True)
            for name in _viz_names(args.images):
                check_not_special(viz / name, "--viz")
                if Path(args.out).resolve() == (viz / name).resolve():
                    raise DestinationError(f"--out {args.out}: is also the annotated image of an input")
    except DestinationError as err:
        raise BadInput(str(err)) from None


def _interrupted(stop: BaseException) -> Interrupted:
    return stop if isinstance(stop, Interrupted) else Interrupted(signal.SIGINT)


def run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..loading import load_model_option
    from ..processing.processor import GLIPv2Processor, load_image
    from .predictor import Predictor
    from .visualize import draw_detections, draw_text_banner

    apply_threads(args.threads)
    reuse_freed_memory()

    try:
        _check_call(args)
        overrides = processor_overrides(args)
        out = Path(args.out)
        check_outputs(args)
        try:
            model = load_model_option(args.model, args.device)
        except ValueError as err:
            raise BadInput(str(err)) from None
        processor = GLIPv2Processor.for_model(model, **overrides, one_label_per_box=args.one_label_per_box)
        predictor = Predictor(model, processor, batch_size=args.batch_size)
        vocabulary = _vocabulary(args, predictor)
        threshold = predictor.resolve_threshold(args.threshold)  # the model's own when not given
    except BadInput as err:
        print(f"glipv2 predict: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT

    entries: list[dict[str, Any]] = []
    failed = 0
    viz_dir = Path(args.viz) if args.viz else None
    viz_names = _viz_names(args.images)
    pending: list[tuple[int, Any, Image.Image | None]] = []  # (index, prepared tensor, image kept for --viz)

    def fail(index: int, problem: str) -> None:
        nonlocal failed
        entries[index].pop("detections", None)
        entries[index]["error"] = problem
        failed += 1
        tqdm.write(f"glipv2 predict: {problem}", file=sys.stderr)  # keeps the progress bar intact

    def understand(images: list[Image.Image]) -> list[dict[str, Any]]:
        """The VQA / caption result fields of each image (a batch of `pending`)."""
        if args.question is not None:
            ranked = predictor.answer(images, [args.question] * len(images), top_k=args.top_k)
            return [
                {"question": args.question, "answers": [{"answer": a, "score": round(s, 4)} for a, s in r]}
                for r in ranked
            ]
        captions = predictor.caption(
            images, beam_size=args.beam_size, max_length=args.max_length, length_penalty=args.length_penalty
        )
        return [{"generated_caption": c} for c in captions]

    def flush_understanding() -> None:
        try:
            results = understand([image for _, _, image in pending])
        except Exception as err:  # noqa: BLE001
            for index, _, _ in pending:
                fail(index, f"{args.images[index]}: prediction failed ({type(err).__name__}: {err})")
            pending.clear()
            return
        for (index, _, image), result in zip(pending, results):
            entries[index].update(result)
            if viz_dir is not None:
                text = (
                    [
                        f"Q: {args.question}",
                        f"A: {result['answers'][0]['answer']} ({result['answers'][0]['score']:.2f})",
                    ]
                    if args.question is not None
                    else [result["generated_caption"]]
                )
                try:
                    with atomic_path(viz_dir / viz_names[index]) as tmp:  # type: ignore[operator]
                        draw_text_banner(image, text).save(tmp, format="PNG")
                except (OSError, ValueError) as err:
                    fail(index, f"{args.images[index]}: cannot write the annotated image ({err})")
        pending.clear()

    def flush() -> None:
        if vocabulary is None:
            flush_understanding()
            return
        try:
            results = predictor.predict_prepared(
                [p for _, p, _ in pending], [vocabulary] * len(pending), threshold
            )
        # e.g. out of memory on a huge image: the other batches still run
        except Exception as err:  # noqa: BLE001
            for index, _, _ in pending:
                fail(index, f"{args.images[index]}: prediction failed ({type(err).__name__}: {err})")
            pending.clear()
            return
        for (index, _, image), detections in zip(pending, results):
            entries[index]["detections"] = detections.to_dict()
            if image is not None:
                try:
                    # through a temporary file: an interruption never leaves half a PNG
                    with atomic_path(viz_dir / viz_names[index]) as tmp:  # type: ignore[operator]
                        draw_detections(image, detections).save(tmp, format="PNG")
                except (OSError, ValueError) as err:
                    fail(index, f"{args.images[index]}: cannot write the annotated image ({err})")
        pending.clear()

    stopped: Interrupted | None = None
    try:
        with interruptible():
            for index, file in enumerate(
                tqdm(args.images, desc="predict", unit="image", disable=len(args.images) < 2)
            ):
                entry: dict[str, Any] = {"file": file}
                entries.append(entry)
                prompt = {} if vocabulary is None else {"prompt": vocabulary.text}
                try:
                    # read once: the same pixels feed the model and the annotated PNG
                    image = load_image(file)
                    if vocabulary is None:  # answers and captions prepare their images themselves
                        tensor, (width, height) = None, image.size
                    else:
                        tensor, (height, width) = processor.prepare_image(image)
                except ValueError as err:
                    entry.update(prompt)
                    fail(index, str(err))
                    continue
                entry.update(width=width, height=height, **prompt)
                keep = image if viz_dir is not None or vocabulary is None else None
                pending.append((index, (tensor, (height, width)), keep))
                if len(pending) >= predictor.read_ahead:  # several batches, grouped by size
                    flush()
            if pending:
                flush()
    except (Interrupted, KeyboardInterrupt) as stop:
        stopped = _interrupted(stop)
        # only the finished images: an image read but not yet through the model has no result
        entries = [e for e in entries if _finished(e)]

    document: dict[str, Any] = {"model": args.model}
    if vocabulary is not None:
        document.update(threshold=threshold, labels=vocabulary.names)
    elif args.question is not None:
        document.update(task="vqa", question=args.question, top_k=args.top_k)
    else:
        document.update(task="caption", beam_size=args.beam_size, max_length=args.max_length)
    document["images"] = entries
    if stopped is not None:
        document.update(incomplete=True, interrupted_by=stopped.name, images_requested=len(args.images))
    atomic_write_json(out, document, indent=1, end="\n")  # a crash never leaves half a results file
    if not args.quiet and entries:
        _print_table(results_table(entries))
    if stopped is not None:
        print(
            f"glipv2 predict: interrupted by {stopped.name} after {len(entries)} of {len(args.images)} "
            f"image(s); their results -> {args.out} (marked incomplete)",
            file=sys.stderr,
        )
        return stopped.exit_code
    done = len(entries) - failed
    found = (
        f", {sum(len(e.get('detections', [])) for e in entries)} detection(s)"
        if vocabulary is not None
        else ""
    )
    print(
        f"{done} image(s) processed{found} -> {args.out}" + (f"; {failed} failed" if failed else ""),
        file=sys.stderr,
    )
    return EXIT_BAD_INPUT if failed else 0


def results_table(entries: list[dict[str, Any]], rows_per_image: int = TABLE_ROWS_PER_IMAGE) -> str:
    """The `images` entries of a results document as a plain-text table with aligned columns:
    image, label, score, box (x1,y1,x2,y2 in whole pixels) for detections; image, answer, score for
    answers; image, caption for captions. At most `rows_per_image` rows per image, then "… N more"."""
    captions = any("generated_caption" in e for e in entries)
    answers = any("answers" in e for e in entries)
    header = (
        ["image", "caption"]
        if captions
        else ["image", "answer", "score"]
        if answers
        else ["image", "label", "score", "box"]
    )
    rows: list[list[str]] = []
    for entry in entries:
        name = str(entry.get("file", ""))
        if "error" in entry:
            rows.append([name, f"error: {entry['error']}"])
            continue
        if captions:
            rows.append([name, entry.get("generated_caption", "")])
            continue
        if answers:
            found = [[a["answer"], f"{a['score']:.2f}"] for a in entry.get("answers", [])]
        else:
            found = [
                [d["label"], f"{d['score']:.2f}", ",".join(str(round(v)) for v in d["box_xyxy"])]
                for d in entry.get("detections", [])
            ]
        if not found:
            rows.append([name, "(nothing above the threshold)" if not answers else "(no answer)"])
        for i, row in enumerate(found[:rows_per_image]):
            rows.append([name if i == 0 else "", *row])
        if len(found) > rows_per_image:
            rows.append(["", f"… {len(found) - rows_per_image} more (all in the JSON)"])
    return _aligned([header, *rows], right={2} if not captions else set())


def _print_table(table: str) -> None:
    """The table on stdout; a reader that went away (`glipv2 predict ... | head -3`) is no error:
    the JSON is written already."""
    try:
        print(table, flush=True)
    except BrokenPipeError:
        # as the Python docs advise: later writes (the interpreter's final flush) go nowhere
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _aligned(rows: list[list[str]], right: set[int]) -> str:
    """Columns padded to their widest cell (`right`: right-aligned columns, the scores); a row with
    fewer cells (a note, an error) runs on across the columns it lacks."""
    full = [r for r in rows if len(r) == len(rows[0])]
    widths = [max(len(r[c]) for r in full) for c in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[c]) if c in right and len(row) == len(widths) else cell.ljust(widths[c])
            for c, cell in enumerate(row[:-1])
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _finished(entry: dict[str, Any]) -> bool:
    return any(k in entry for k in ("detections", "answers", "generated_caption", "error"))


def predict_main(argv: list[str]) -> int:
    """`glipv2 predict ARGV...` from Python (argv starts with "predict"), without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="glipv2")
    add_predict_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))
