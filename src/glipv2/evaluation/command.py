"""`glipv2 eval {coco,lvis,odinw,flickr,refcoco,vqa,caption}`: a model (or a predictions file) on a benchmark.

`vqa` (official VQA accuracy, overall and per question / answer type) and `caption` (CIDEr-D,
BLEU-1…4) run in one process (no torchrun sharding) and always write the predictions file, in the
official results format (`[{"question_id", "answer"}]`, `[{"image_id", "caption"}]`), also when
re-scoring a `--predictions` file.

Writes the metrics json (`--out`) and, beside it, the raw predictions in COCO results format
(`<out stem>_predictions.json`; for ODinW a mapping dataset name -> entries), and prints a table.
Problems with the call (model, annotations that do not match the image folder, a malformed
predictions file, an --out that would overwrite an input or cannot be written) are one line on
stderr and exit code 2, before any forward pass. Under `torchrun` each rank runs its share of the
images and rank 0 scores and writes. Ctrl-C or SIGTERM during a model run writes the predictions of
the images finished so far and a metrics file marked `"incomplete": true` (no scores: a subset's AP
is not the benchmark's), and exits with 128 + the signal number (130, 143).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.allocator import reuse_freed_memory
from ..utils.io import (
    DestinationError,
    Interrupted,
    atomic_write_json,
    check_destination,
    interruptible,
    read_json,
)
from ..utils.threads import add_threads_option, apply_threads

if TYPE_CHECKING:
    from .base import Benchmark

EXIT_BAD_INPUT = 2
TASKS = ("coco", "lvis", "odinw", "flickr", "refcoco", "vqa", "caption")
LANGUAGE_TASKS = ("vqa", "caption")


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="score a model on COCO, LVIS, ODinW, Flickr30k, RefCOCO, VQA or COCO captions",
        description="Evaluate with the benchmark's standard protocol: box AP (COCO, LVIS incl. FixedAP, ODinW), "
        "Recall@1/5/10 (Flickr30k), accuracy at IoU 0.5 (RefCOCO/+/g), the official VQA accuracy (vqa), "
        "CIDEr-D and BLEU (caption).",
    )
    p.add_argument("task", choices=TASKS)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="NAME_OR_DIR", help="a model folder, a hub id, or a preset")
    source.add_argument(
        "--predictions",
        metavar="FILE",
        help="score this results file instead of running a model (COCO results; vqa: "
        "[{question_id, answer}]; caption: [{image_id, caption}])",
    )
    p.add_argument(
        "--ann",
        required=True,
        metavar="FILE",
        help="annotations: COCO/LVIS instances json, MDETR-style json, refer-format refs(*).p; "
        "for odinw the folder of datasets; VQAv2 annotations json (vqa); COCO captions json (caption)",
    )
    p.add_argument(
        "--questions",
        metavar="FILE",
        help="vqa: VQAv2 questions json (images from its 'images' list, else "
        "COCO_<data_subtype>_<image_id:012d>.jpg under --images)",
    )
    p.add_argument(
        "--top-k", type=int, metavar="K", help="vqa --model: keep the K best answers per question (default 1)"
    )
    p.add_argument("--beam-size", type=int, metavar="N", help="caption --model: beam width (default 3)")
    p.add_argument(
        "--max-length", type=int, metavar="L", help="caption --model: most tokens per caption (default 30)"
    )
    p.add_argument(
        "--length-penalty", type=float, metavar="X", help="caption --model: beam length penalty (default 1.0)"
    )
    p.add_argument(
        "--images",
        metavar="DIR",
        help="image folder (odinw: images lie beside each dataset's json; vqa / caption: default the "
        "folder of --questions / --ann)",
    )
    p.add_argument("--split", help="refer-format RefCOCO split (val, testA, ...)")
    p.add_argument(
        "--pattern",
        default="*.json",
        metavar="GLOB",
        help="odinw: which json files under --ann are datasets (e.g. '*valid*/*.json'; default *.json)",
    )
    p.add_argument("--chunk-size", type=int, metavar="N", help="class names per prompt (lvis default 40)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images (per dataset)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", metavar="SHORT,LONG", help="test resize (default: the model's)")
    size.add_argument("--no-resize", action="store_true", help="feed the images at their own size")
    p.add_argument(
        "--one-label-per-box",
        action="store_true",
        help="keep only the best label of overlapping boxes (NMS across labels; not official): "
        "AP then follows each box's top-1 name, as `glipv2 predict --one-label-per-box`",
    )
    p.add_argument(
        "--device", default=None, help="torch device (default: cuda:LOCAL_RANK if available, else cpu)"
    )
    add_threads_option(p)
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the metrics json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)
    return p


class BadInput(ValueError):
    """A problem with the call, reported as one line."""


def predictions_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_predictions.json")


def build_benchmarks(args: argparse.Namespace, distributed: bool = True) -> list[Benchmark]:
    """The benchmark(s) of a task; ODinW gives one per dataset."""
    ann = Path(args.ann)
    images = Path(args.images) if args.images else None
    if args.task != "odinw" and images is None and args.model is not None:
        raise BadInput(f"{args.task} --model needs --images")
    image_dir = images or ann.parent
    if args.task == "coco":
        from .coco import coco_benchmark

        return [coco_benchmark(ann, image_dir, distributed=distributed)]
    if args.task == "lvis":
        from .lvis import lvis_benchmark

        return [lvis_benchmark(ann, image_dir, chunk_size=args.chunk_size or 40, distributed=distributed)]
    if args.task == "odinw":
        from .odinw import odinw_benchmarks

        return odinw_benchmarks(ann, distributed=distributed, pattern=args.pattern)
    if args.task == "flickr":
        from .grounding import flickr_benchmark

        return [flickr_benchmark(ann, image_dir, distributed=distributed)]
    from .grounding import refexp_benchmark

    return [refexp_benchmark(ann, image_dir, split=args.split, distributed=distributed)]


def _check_call(args: argparse.Namespace) -> None:
    for name in ("batch_size", "limit", "chunk_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BadInput(f"--{name.replace('_', '-')} {value}: must be >= 1")
    language = [
        f"--{name.replace('_', '-')}"
        for name in ("questions", "top_k", "beam_size", "max_length", "length_penalty")
        if getattr(args, name) is not None
    ]
    if language:
        raise BadInput(f"{', '.join(language)}: only for the vqa and caption tasks")
    _check_outputs(args)
    if args.predictions and (args.size or args.no_resize or args.device or args.one_label_per_box):
        raise BadInput(
            "--size, --no-resize, --one-label-per-box and --device go with --model, not --predictions"
        )


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail now, not after an hour of evaluation, when the metrics or the predictions file cannot
    be written, or would overwrite an input (--ann, --predictions, the image folder's files, the
    model's files)."""
    from ..loading import local_model_files

    out = Path(args.out)
    inputs = [p for p in (args.ann, args.predictions, args.images) if p]
    if args.model:
        inputs += local_model_files(args.model)
    try:
        check_destination(out, inputs, "--out")
        if args.model:
            check_destination(predictions_path(out), inputs, "the predictions file")
    except DestinationError as err:
        raise BadInput(str(err)) from None


def _load_predictor(args: argparse.Namespace) -> Any:
    from ..inference.command import BadInput as PredictBadInput
    from ..inference.command import processor_overrides
    from ..inference.predictor import Predictor
    from ..loading import load_model_option
    from ..processing.processor import GLIPv2Processor
    from ..utils import distributed

    try:
        overrides = processor_overrides(args)
    except PredictBadInput as err:
        raise BadInput(str(err)) from None
    try:
        device = distributed.select_device(args.device)
    except ValueError as err:
        raise BadInput(f"--device {args.device}: {str(err).split(': ', 1)[-1]}") from None
    distributed.init_from_env(device)
    try:
        model = load_model_option(args.model)  # placed on `device` by the Predictor
    except ValueError as err:
        raise BadInput(str(err)) from None
    processor = GLIPv2Processor.for_model(model, **overrides, one_label_per_box=args.one_label_per_box)
    return Predictor(model, processor, device=device, batch_size=args.batch_size)


def _score_predictions(args: argparse.Namespace, benchmarks: list[Benchmark]) -> dict[str, Any]:
    from .base import read_results

    try:
        loaded = (
            read_results(args.predictions) if args.task != "odinw" else _read_odinw_results(args.predictions)
        )
        per_benchmark = {
            b.name: loaded if args.task != "odinw" else loaded.get(b.name, []) for b in benchmarks
        }
        if args.task == "odinw":
            unknown = sorted(set(loaded) - {b.name for b in benchmarks})
            if unknown:
                raise ValueError(
                    f"{args.predictions}: predictions for datasets not under --ann: {unknown[:5]}"
                )
        for b in benchmarks:
            b.evaluator.reset()
            # with --limit, the images a limited model run covered; else every annotated image
            covered = [s.image_id for s in b.samples[: args.limit]] if args.limit else None
            b.evaluator.add_results(per_benchmark[b.name], covered)
    except (OSError, ValueError) as err:
        raise BadInput(str(err)) from None
    return {b.name: b.evaluator.evaluate() for b in benchmarks}


def _read_odinw_results(path: str) -> dict[str, list[dict[str, Any]]]:
    from .base import check_results_layout

    data = read_json(path, "predictions")
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: ODinW predictions are a mapping dataset name -> COCO results list"
        )  # file content
    for name, entries in data.items():
        try:
            check_results_layout(entries)
        except ValueError as err:
            raise ValueError(f"{path}: dataset {name}: {err}") from None
    return data


def run_eval(args: argparse.Namespace) -> int:
    # the heavy imports live in the functions that run: `glipv2 eval --help` must not wait for torch
    from ..utils import distributed
    from .base import run_benchmark

    apply_threads(args.threads)
    reuse_freed_memory()
    if args.task in LANGUAGE_TASKS:
        return run_language_eval(args)
    try:
        _check_call(args)
        predictor = _load_predictor(args) if args.model else None
        try:
            benchmarks = build_benchmarks(args)
        except (OSError, ValueError) as err:
            raise BadInput(str(err).splitlines()[0]) from None
        if predictor is None:
            metrics_by_name = _score_predictions(args, benchmarks)
            images, seconds = 0, 0.0
        else:
            for benchmark in benchmarks:
                if args.limit:
                    benchmark.samples = benchmark.samples[: args.limit]
            if args.chunk_size and args.task != "lvis":
                for benchmark in benchmarks:
                    benchmark.chunk_size = args.chunk_size
            for benchmark in benchmarks:
                try:
                    benchmark.check_images()
                    benchmark.check_prompts(predictor)
                except (FileNotFoundError, ValueError) as err:
                    raise BadInput(str(err)) from None
            metrics_by_name = {}
            images = 0
            started = time.perf_counter()  # model loading excluded; forward passes and scoring included
            try:
                with interruptible():
                    for benchmark in benchmarks:
                        metrics_by_name[benchmark.name] = run_benchmark(
                            predictor, benchmark, batch_size=args.batch_size, progress=not args.no_progress
                        )
                        images += len(benchmark.samples)
            except (Interrupted, KeyboardInterrupt) as stop:
                return _write_interrupted(args, benchmarks, metrics_by_name, stop)
            seconds = time.perf_counter() - started
    except BadInput as err:
        print(f"glipv2 eval: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if distributed.get_rank() != 0:
        return 0
    if args.task == "odinw":
        from .odinw import odinw_summary

        metrics = odinw_summary(metrics_by_name)
        predictions: Any = {b.name: b.evaluator.predictions() for b in benchmarks}
    else:
        metrics = metrics_by_name[benchmarks[0].name]
        predictions = benchmarks[0].evaluator.predictions()
    out = Path(args.out)
    print(format_metrics(metrics))
    try:
        atomic_write_json(out, metrics, indent=1)
        if args.model:
            atomic_write_json(predictions_path(out), predictions, indent=1)
    except OSError as err:  # the table above still holds the figures
        print(f"glipv2 eval: cannot write the results ({err})", file=sys.stderr)
        return 1
    done = f"{images} images in {seconds:.1f} s ({images / seconds:.2f} images/s); " if images else ""
    written = f"{out}" + (f" and {predictions_path(out)}" if args.model else "")
    print(f"{done}wrote {written}", file=sys.stderr)
    return 0


def _write_interrupted(
    args: argparse.Namespace, benchmarks: list[Benchmark], finished: dict[str, Any], stop: BaseException
) -> int:
    """After Ctrl-C / SIGTERM: the predictions of every image finished (this process's share under
    torchrun) and a metrics file marked incomplete holding the benchmarks scored before the stop.
    Returns the exit code, 128 + the signal number."""
    from tqdm import tqdm

    from ..utils import distributed

    stopped = stop if isinstance(stop, Interrupted) else Interrupted(signal.SIGINT)
    if distributed.get_rank() != 0:  # rank 0 writes its own share; the others only stop
        return stopped.exit_code
    started = [b for b in benchmarks if b.name in finished or _done_ids(b)]
    done = sum(len(_done_ids(b)) for b in started)
    total = sum(len(b.samples) for b in benchmarks)
    metrics = {
        "incomplete": True,
        "interrupted_by": stopped.name,
        "images_done": done,
        "images_total": total,
        "scored": finished,  # benchmarks (ODinW datasets) finished before the stop
    }
    predictions: Any = (
        {b.name: b.evaluator.predictions() for b in started}
        if args.task == "odinw"
        else (benchmarks[0].evaluator.predictions() if started else [])
    )
    out = Path(args.out)
    try:
        atomic_write_json(out, metrics, indent=1)
        atomic_write_json(predictions_path(out), predictions, indent=1)
    except OSError as err:
        print(
            f"glipv2 eval: interrupted by {stopped.name}; cannot write the results ({err})", file=sys.stderr
        )
        return stopped.exit_code
    # tqdm.write: above the progress bar of the interrupted benchmark, which clears itself on exit
    tqdm.write(
        f"glipv2 eval: interrupted by {stopped.name} after {done} of {total} image(s); their predictions "
        f"-> {predictions_path(out)}, {out} marked incomplete",
        file=sys.stderr,
    )
    return stopped.exit_code


def _done_ids(benchmark: Benchmark) -> list[int]:
    """Image ids whose detections reached the benchmark's evaluator (ResultsEvaluator keeps them)."""
    return list(getattr(benchmark.evaluator, "image_ids", []))


def format_metrics(metrics: dict[str, Any], indent: str = "") -> str:
    """Nested metrics as aligned tables: one row of names and one of values per group of figures."""
    lines: list[str] = []
    figures = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    if figures:
        lines.extend(_table(figures, indent))
    for key, value in metrics.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}")
            lines.append(format_metrics(value, indent + "  "))
    return "\n".join(lines)


def _table(figures: dict[str, Any], indent: str) -> list[str]:
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)

    cells = [(str(k), cell(v)) for k, v in figures.items()]
    widths = [max(len(k), len(v)) for k, v in cells]
    return [
        indent + "  ".join(k.rjust(w) for (k, _), w in zip(cells, widths)),
        indent + "  ".join(v.rjust(w) for (_, v), w in zip(cells, widths)),
    ]


# --- vqa and caption -------------------------------------------------------------------------------
def _check_language_call(args: argparse.Namespace) -> None:
    """Option checks of `eval vqa` / `eval caption`, and their outputs (both files are always
    written), before any file is read or a model loaded."""
    task = args.task
    if task == "vqa" and not args.questions:
        raise BadInput("vqa needs --questions (the VQAv2 questions json)")
    wrong = [
        f"--{name.replace('_', '-')}"
        for name, tasks in (
            ("questions", ("vqa",)),
            ("top_k", ("vqa",)),
            ("beam_size", ("caption",)),
            ("max_length", ("caption",)),
            ("length_penalty", ("caption",)),
            ("split", ()),
            ("chunk_size", ()),
        )
        if getattr(args, name) is not None and task not in tasks
    ]
    if args.one_label_per_box:
        wrong.append("--one-label-per-box")
    if wrong:
        raise BadInput(f"{', '.join(wrong)}: not an option of eval {task}")
    for name in ("batch_size", "limit", "top_k", "beam_size", "max_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BadInput(f"--{name.replace('_', '-')} {value}: must be >= 1")
    if args.length_penalty is not None and not math.isfinite(args.length_penalty):
        raise BadInput(f"--length-penalty {args.length_penalty}: must be a finite number")
    model_only = [
        flag
        for flag, given in (
            ("--top-k", args.top_k is not None),
            ("--beam-size", args.beam_size is not None),
            ("--max-length", args.max_length is not None),
            ("--length-penalty", args.length_penalty is not None),
            ("--size", args.size is not None),
            ("--no-resize", args.no_resize),
            ("--device", args.device is not None),
        )
        if given
    ]
    if args.predictions and model_only:
        raise BadInput(f"{', '.join(model_only)}: go with --model, not --predictions")
    from ..loading import local_model_files

    out = Path(args.out)
    inputs = [p for p in (args.ann, args.questions, args.predictions, args.images) if p]
    if args.model:
        inputs += local_model_files(args.model)
    try:
        check_destination(out, inputs, "--out")
        check_destination(predictions_path(out), inputs, "the predictions file")
    except DestinationError as err:
        raise BadInput(str(err)) from None
    if task == "caption":
        from .caption import JavaUnavailable, java_executable

        try:
            java_executable()
        except JavaUnavailable as err:
            raise BadInput(str(err)) from None


def _language_setup(args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]], dict[int, Path]]:
    """The evaluator, the work items (questions; for caption, one {"image_id"} per image) and the
    image files a model run needs; a --limit keeps the first N items and evaluates those alone."""
    try:
        if args.task == "vqa":
            from .vqa import VQAEvaluator, read_vqa_questions, vqa_image_paths

            questions_file = read_vqa_questions(args.questions)
            items = questions_file["questions"][: args.limit]
            evaluator: Any = VQAEvaluator(args.ann, questions=items)
            paths: dict[int, Path] = {}
            if args.model:
                folder = Path(args.images) if args.images else Path(args.questions).parent
                paths = vqa_image_paths(questions_file, folder)
            return evaluator, items, paths
        from .caption import CaptionEvaluator, load_caption_references

        references, names = load_caption_references(args.ann)
        ids = sorted(references)[: args.limit]
        evaluator = CaptionEvaluator(references, image_ids=ids)
        if args.model and not names:
            raise ValueError(
                f"{args.ann}: has no 'images' list ({{'id', 'file_name'}}) to find the images by"
            )
        folder = Path(args.images) if args.images else Path(args.ann).parent
        paths = {i: folder / names[i] for i in ids} if args.model else {}
        return evaluator, [{"image_id": i} for i in ids], paths
    except (OSError, ValueError) as err:
        raise BadInput(str(err).splitlines()[0]) from None


def run_language_eval(args: argparse.Namespace) -> int:
    """`glipv2 eval vqa` / `glipv2 eval caption`: see the module docstring."""
    results: list[dict[str, Any]] = []
    try:
        _check_language_call(args)
        evaluator, items, paths = _language_setup(args)
        if args.predictions:
            from .caption import read_caption_results
            from .vqa import read_vqa_results

            try:
                loaded = (read_vqa_results if args.task == "vqa" else read_caption_results)(args.predictions)
                evaluator.process(loaded)
            except (OSError, ValueError) as err:
                raise BadInput(str(err).splitlines()[0]) from None
            predictions: list[dict[str, Any]] = evaluator.predictions()
            done, seconds = 0, 0.0
        else:
            predictor = _load_predictor(args)
            started = time.perf_counter()
            try:
                with interruptible():
                    skipped = _run_language_model(args, predictor, items, paths, results)
            except (Interrupted, KeyboardInterrupt) as stop:
                return _write_language_interrupted(args, results, len(items), stop)
            evaluator.process(results)
            predictions = results
            done, seconds = len(items) - skipped, time.perf_counter() - started
    except BadInput as err:
        print(f"glipv2 eval: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = Path(args.out)
    try:  # first, so that a failure to score (the caption tokenizer's Java) keeps a model's answers
        atomic_write_json(predictions_path(out), predictions, indent=1)
        metrics = evaluator.evaluate()
        atomic_write_json(out, metrics, indent=1)
    except OSError as err:
        print(f"glipv2 eval: cannot write the results ({err})", file=sys.stderr)
        return 1
    except RuntimeError as err:  # the caption tokenizer failed
        print(f"glipv2 eval: {err} (predictions in {predictions_path(out)})", file=sys.stderr)
        return 1
    print(format_vqa_metrics(metrics) if args.task == "vqa" else format_metrics(metrics))
    unit = "questions" if args.task == "vqa" else "images"
    rate = f"{done} {unit} in {seconds:.1f} s ({done / seconds:.2f} {unit}/s); " if done and seconds else ""
    print(f"{rate}wrote {out} and {predictions_path(out)}", file=sys.stderr)
    return 0


def _run_language_model(
    args: argparse.Namespace,
    predictor: Any,
    items: list[dict[str, Any]],
    paths: dict[int, Path],
    results: list[dict[str, Any]],
) -> int:
    if args.task == "vqa":
        from .vqa import answer_questions

        return answer_questions(
            predictor,
            items,
            paths,
            results,
            batch_size=args.batch_size,
            top_k=args.top_k or 1,
            progress=not args.no_progress,
        )
    from .caption import caption_images

    return caption_images(
        predictor,
        paths,
        results,
        batch_size=args.batch_size,
        beam_size=args.beam_size or 3,
        max_length=args.max_length or 30,
        length_penalty=1.0 if args.length_penalty is None else args.length_penalty,
        progress=not args.no_progress,
    )


def _write_language_interrupted(
    args: argparse.Namespace, results: list[dict[str, Any]], total: int, stop: BaseException
) -> int:
    """After Ctrl-C / SIGTERM: the predictions so far and a metrics file marked incomplete (no
    scores: a subset's accuracy or CIDEr is not the benchmark's). Returns 128 + the signal number."""
    from tqdm import tqdm

    stopped = stop if isinstance(stop, Interrupted) else Interrupted(signal.SIGINT)
    unit = "questions" if args.task == "vqa" else "images"
    metrics = {
        "incomplete": True,
        "interrupted_by": stopped.name,
        f"{unit}_done": len(results),
        f"{unit}_total": total,
    }
    out = Path(args.out)
    try:
        atomic_write_json(out, metrics, indent=1)
        atomic_write_json(predictions_path(out), results, indent=1)
    except OSError as err:
        print(
            f"glipv2 eval: interrupted by {stopped.name}; cannot write the results ({err})", file=sys.stderr
        )
        return stopped.exit_code
    tqdm.write(
        f"glipv2 eval: interrupted by {stopped.name} after {len(results)} of {total} {unit}; their "
        f"predictions -> {predictions_path(out)}, {out} marked incomplete",
        file=sys.stderr,
    )
    return stopped.exit_code


def format_vqa_metrics(metrics: dict[str, Any]) -> str:
    """The overall figures as a table, then one row per answer type and per question type."""
    vqa = metrics["vqa"]
    lines = _table({k: v for k, v in vqa.items() if not isinstance(v, dict)}, "")
    for title, key in (("answer type", "per_answer_type"), ("question type", "per_type")):
        groups = vqa[key]
        width = max([len(title), *(len(t) for t in groups)])
        lines.append(f"{title.ljust(width)}  accuracy")
        lines.extend(f"{t.ljust(width)}  {v:8.3f}" for t, v in groups.items())
    return "\n".join(lines)
