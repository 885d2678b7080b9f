"""`glipv2 train`: train or fine-tune a model on COCO-json or grounding-json data.

With no arguments it trains `glipv2_tiny` on a freshly generated ShapesWorld (train split, plus a
val split for periodic evaluation). Under `torchrun` every process runs this same command (gloo on
CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..utils.allocator import reuse_freed_memory
from ..utils.threads import add_threads_option, apply_threads

EXIT_BAD_INPUT = 2
DEFAULT_OUT = "runs/glipv2_tiny_shapes"


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune on COCO-json / grounding-json data (default: glipv2_tiny on ShapesWorld)",
        description="Train with the GLIPv2 losses. Without --train-ann, a ShapesWorld split is generated.",
    )
    p.add_argument(
        "--model",
        default="glipv2_tiny",
        metavar="NAME_OR_DIR",
        help="preset to train from scratch, or a model folder / hub id to fine-tune (default glipv2_tiny)",
    )
    p.add_argument("--train-ann", metavar="FILE", help="COCO instances json or MDETR-style grounding json")
    p.add_argument("--train-images", metavar="DIR", help="images of --train-ann")
    p.add_argument("--vqa-questions", metavar="FILE", help="VQAv2 questions json (multi-task: VQA batches)")
    p.add_argument("--vqa-ann", metavar="FILE", help="VQAv2 annotations json of --vqa-questions")
    p.add_argument("--vqa-images", metavar="DIR", help="images of --vqa-questions")
    p.add_argument(
        "--captions", metavar="FILE", help="COCO captions json or Karpathy-split json (caption batches)"
    )
    p.add_argument("--caption-images", metavar="DIR", help="images of --captions")
    p.add_argument(
        "--caption-split", metavar="NAME", help="Karpathy split to train on (train takes restval too)"
    )
    p.add_argument("--val-ann", metavar="FILE", help="COCO instances json for periodic box AP")
    p.add_argument("--val-images", metavar="DIR")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"run folder (default {DEFAULT_OUT})")
    p.add_argument("--config", metavar="FILE", help="TrainConfig fields as YAML or JSON")
    p.add_argument("--max-steps", type=int, metavar="N")
    p.add_argument("--batch-size", type=int, metavar="N")
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--shapes-images",
        type=int,
        default=2000,
        metavar="N",
        help="ShapesWorld train images to generate when no --train-ann is given (default 2000)",
    )
    p.add_argument(
        "--val-limit", type=int, default=200, metavar="N", help="images of the val set per evaluation"
    )
    p.add_argument(
        "--no-val",
        action="store_true",
        help="no evaluation during or after training, and no ShapesWorld val split (score the model "
        "folder with `glipv2 eval` instead)",
    )
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT has a checkpoint")
    p.add_argument(
        "--resume-other-data",
        action="store_true",
        help="resume OUT's checkpoint even though it was written for other training data (refused otherwise)",
    )
    p.add_argument(
        "--device", default=None, help="torch device (default: cuda:LOCAL_RANK if available, else cpu)"
    )
    add_threads_option(p)
    p.set_defaults(func=run_train)
    return p


class BadInput(ValueError):
    pass


def check_run_folder(out: Path, inputs: list[Path]) -> None:
    """Refuse, before any work, a run folder that is or holds one of the command's inputs (training
    writes last.pt, the logs and model/ there: `--out` equal to the image folder, or `--model` being
    OUT/model, would mix them or overwrite the input), a path that is not a folder, a folder that
    cannot be written, and a symlink / FIFO / device where training writes a file."""
    from ..utils.io import DestinationError, check_destination, check_not_special
    from .trainer import OUTPUT_FILES

    try:
        check_destination(out, inputs, "--out", folder=True)
        for name in OUTPUT_FILES:
            check_not_special(out / name, "--out")
        check_not_special(out / "model", "--out")
    except DestinationError as err:
        raise BadInput(str(err)) from None


def _shapes_data(
    out: Path, num_images: int, rank: int, with_val: bool = True
) -> tuple[Path, Path, Path | None, Path | None]:
    """Generate (once) a ShapesWorld train split, and unless `with_val` is off a val split, inside the
    run folder. The train split's grounding, VQA and caption files sit beside its instances.json."""
    import torch.distributed as dist

    from ..data.shapes_world import generate_shapes_world

    train, val = out / "data" / "train", out / "data" / "val"
    splits = [(train, num_images, 0, "train")] + ([(val, 200, 1, "val")] if with_val else [])
    if rank == 0:
        for folder, n, seed, split in splits:
            if not (folder / "instances.json").is_file():
                generate_shapes_world(folder, n, seed, split=split, progress=True)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    if not with_val:
        return train / "instances.json", train / "images", None, None
    return train / "instances.json", train / "images", val / "instances.json", val / "images"


def _saved_vqa_answers(model: str) -> tuple[str, ...]:
    """The answer vocabulary of a local model folder's config (none for presets, .pth files, hub ids)."""
    from ..modeling.config import GLIPv2Config

    config = Path(model) / "config.json"
    if not config.is_file():
        return ()
    try:
        return tuple(GLIPv2Config.load(config).vqa_answers)
    except (OSError, ValueError):
        return ()  # load_model reports the problem


def _understanding_data(sources: dict[str, tuple[Any, ...]], config: Any) -> dict[str, tuple[Any, Any]]:
    """The VQA and caption datasets of `sources` (task -> files), with the VQA answer vocabulary
    built from the training answers (`config.vqa_min_answer_count`): task -> (dataset, extra)."""
    from ..data.captions import CaptionDataset
    from ..data.grounding import SkipCounter
    from ..data.vqa import VQADataset
    from ..processing.vqa_answers import build_answer_vocabulary

    out: dict[str, tuple[Any, Any]] = {}
    if "vqa" in sources:
        questions, annotations, images = sources["vqa"]
        skips = SkipCounter()
        try:
            vqa = VQADataset(questions, images, annotations, skips=skips)
        except (ValueError, OSError) as err:
            raise BadInput(f"--vqa-questions {questions}: {err}") from None
        answers = build_answer_vocabulary(vqa.answer_lists(), config.vqa_min_answer_count)
        if not answers:
            raise BadInput(
                f"--vqa-ann {annotations}: no answer is given at least {config.vqa_min_answer_count} times"
            )
        out["vqa"] = (vqa, answers)
        if skips.counts:
            print(f"glipv2 train: VQA records skipped: {dict(skips.counts)}", file=sys.stderr)
    if "caption" in sources:
        ann, images, split = sources["caption"]
        skips = SkipCounter()
        try:
            out["caption"] = (CaptionDataset(ann, images, split=split, skips=skips), None)
        except (ValueError, OSError) as err:
            raise BadInput(f"--captions {ann}: {err}") from None
        if skips.counts:
            print(f"glipv2 train: caption records skipped: {dict(skips.counts)}", file=sys.stderr)
    return out


def run_train(args: argparse.Namespace) -> int:
    """`glipv2 train`; Ctrl-C outside the steps (loading, data generation, the final evaluation)
    ends with one line too (inside them, the trainer saves a checkpoint first)."""
    apply_threads(args.threads)
    reuse_freed_memory()
    try:
        return _run_train(args)
    except KeyboardInterrupt:
        print(
            "glipv2 train: interrupted (SIGINT); the last checkpoint in --out, if any, is intact",
            file=sys.stderr,
        )
        return 130


def _run_train(args: argparse.Namespace) -> int:
    import torch

    from ..data.captions import CaptionSample
    from ..data.collate import GroundingCollator, SafeDataset
    from ..data.grounding import CocoGroundingDataset, GroundingSample, build_grounding_dataset
    from ..data.mlm import MaskingVocab
    from ..data.tasks import CaptionCollator, MultiTaskCollator, RandomResizeImage, TaskMixture, VQACollator
    from ..data.transforms import ColourJitter, Compose, build_train_transforms
    from ..data.vqa import VQASample
    from ..inference.predictor import Predictor
    from ..loading import load_model
    from ..modeling.heads import LossConfig
    from ..processing.processor import GLIPv2Processor
    from ..utils import distributed
    from ..utils.io import Interrupted
    from .train_config import TrainConfig
    from .trainer import (
        NoUsableData,
        Trainer,
        TrainingInterrupted,
        TrainingSetupError,
        TrainingStopped,
        skip_summary,
    )

    try:
        if (args.train_ann is None) != (args.train_images is None):
            raise BadInput("--train-ann and --train-images go together")
        if (args.val_ann is None) != (args.val_images is None):
            raise BadInput("--val-ann and --val-images go together")
        if args.no_val and args.val_ann is not None:
            raise BadInput("--no-val and --val-ann exclude each other")
        vqa_given = [a is not None for a in (args.vqa_questions, args.vqa_ann, args.vqa_images)]
        if any(vqa_given) and not all(vqa_given):
            raise BadInput("--vqa-questions, --vqa-ann and --vqa-images go together")
        if (args.captions is None) != (args.caption_images is None):
            raise BadInput("--captions and --caption-images go together")
        if args.caption_split is not None and args.captions is None:
            raise BadInput("--caption-split needs --captions")
        try:
            config = TrainConfig.load(args.config) if args.config else TrainConfig()
            overrides = {
                k: v
                for k, v in (("max_steps", args.max_steps), ("batch_size", args.batch_size), ("lr", args.lr))
                if v is not None
            }
            config = config.replace(**overrides)
        except (OSError, ValueError) as err:
            raise BadInput(f"--config: {err}") from None
        try:
            device = distributed.select_device(args.device)
        except ValueError as err:
            raise BadInput(f"--device {args.device}: {str(err).split(': ', 1)[-1]}") from None
        distributed.init_from_env(device)
        out = Path(args.out)
        inputs = [
            Path(a)
            for a in (
                args.train_ann,
                args.train_images,
                args.val_ann,
                args.val_images,
                args.config,
                args.vqa_questions,
                args.vqa_ann,
                args.vqa_images,
                args.captions,
                args.caption_images,
            )
            if a
        ]
        if Path(args.model).exists():  # a local model folder (not a preset or hub id)
            inputs.append(Path(args.model))
        check_run_folder(out, inputs)
        if args.train_ann is None:
            try:
                train_ann, train_images, val_ann, val_images = _shapes_data(
                    out, args.shapes_images, distributed.get_rank(), not args.no_val
                )
            except OSError as err:  # e.g. the disk filled up while generating
                raise BadInput(
                    f"--out {out}: cannot write the ShapesWorld data ({err.strerror or err})"
                ) from None
            shapes = train_ann.parent  # the multi-task ShapesWorld: every task's files of the split
            sources = {
                "grounding": (shapes / "grounding.json", train_images),
                "vqa": (shapes / "vqa_questions.json", shapes / "vqa_annotations.json", train_images),
                "caption": (shapes / "captions.json", train_images, None),
            }
        else:
            train_ann, train_images = Path(args.train_ann), Path(args.train_images)
            val_ann = Path(args.val_ann) if args.val_ann else None
            val_images = Path(args.val_images) if args.val_images else None
            sources = {}
            if args.vqa_questions:
                sources["vqa"] = (Path(args.vqa_questions), Path(args.vqa_ann), Path(args.vqa_images))
            if args.captions:
                sources["caption"] = (Path(args.captions), Path(args.caption_images), args.caption_split)
        sources = {t: v for t, v in sources.items() if config.tasks.get(t, 1.0) > 0}
        understanding = _understanding_data(sources, config)
        overrides = dict(config.model_overrides)
        # a model that already answers keeps its vocabulary (its logits are in that order); the
        # training answers outside it add nothing to the targets
        if "vqa" in understanding and not _saved_vqa_answers(args.model):
            overrides.setdefault("vqa_answers", understanding["vqa"][1])
        if "caption" in understanding:
            overrides.setdefault("caption_head", True)
        try:
            model = load_model(args.model, warn=False, **overrides)
        except (ValueError, OSError) as err:
            raise BadInput(f"--model {args.model}: {str(err).splitlines()[0]}") from None
        try:
            dataset = build_grounding_dataset(
                train_ann,
                train_images,
                max_categories=config.max_categories,
                seed=config.seed,
                with_masks=model.config.mask_head,
            )
        except (ValueError, OSError, IndexError) as err:
            raise BadInput(f"--train-ann {train_ann}: {err}") from None
        localisation = {"detection" if isinstance(dataset, CocoGroundingDataset) else "grounding": dataset}
        kept = [t for t in (*localisation, *sources) if config.tasks.get(t, 1.0) > 0]
        if not kept:
            raise BadInput(f"--config: every task with data has weight 0 (tasks: {dict(config.tasks)})")
        if "grounding" in sources and "grounding" not in localisation:
            grounding_ann, grounding_images = sources["grounding"]
            try:
                localisation["grounding"] = build_grounding_dataset(
                    grounding_ann, grounding_images, seed=config.seed, with_masks=model.config.mask_head
                )
            except (ValueError, OSError, IndexError) as err:
                raise BadInput(f"{grounding_ann}: {err}") from None
    except BadInput as err:
        print(f"glipv2 train: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT

    torch.manual_seed(config.seed)
    processor = GLIPv2Processor.for_model(model)
    transforms = build_train_transforms(
        config.min_sizes, config.max_size, config.flip_probability, config.colour_strength
    )
    evaluate = None
    if val_ann is not None:
        from ..evaluation.coco import evaluate_detection

        def evaluate(m: Any) -> dict[str, Any]:
            return evaluate_detection(Predictor(m, processor), val_ann, val_images, limit=args.val_limit)

    # L_mlm's token corruption is done with the data, when the loss is on (the Trainer builds the
    # same LossConfig from the same two sources)
    mlm = (
        MaskingVocab.from_tokenizer(processor.tokenizer)
        if LossConfig.for_model(model.config, **config.losses).use_mlm
        else None
    )
    localisation = {
        t: d for t, d in localisation.items() if config.tasks.get(t, 1.0) > 0 or len(localisation) == 1
    }
    if not understanding and len(localisation) == 1:  # one task: the plain pipeline
        train_data: Any = SafeDataset(next(iter(localisation.values())), transforms, seed=config.seed)
        collator: Any = GroundingCollator(processor, mlm)
    else:
        image_only = Compose(
            [RandomResizeImage(config.min_sizes, config.max_size), ColourJitter(config.colour_strength)]
        )
        parts = {t: SafeDataset(d, transforms, seed=config.seed) for t, d in localisation.items()}
        parts |= {t: SafeDataset(d, image_only, seed=config.seed) for t, (d, _) in understanding.items()}
        train_data = TaskMixture(parts, {t: config.tasks.get(t, 1.0) for t in parts})
        collators: dict[type, Any] = {GroundingSample: GroundingCollator(processor, mlm)}
        if "vqa" in understanding:
            collators[VQASample] = VQACollator(processor)
        if "caption" in understanding:
            collators[CaptionSample] = CaptionCollator(processor)
        collator = MultiTaskCollator(collators)
    trainer = Trainer(
        model,
        train_data,
        collator,
        config,
        out,
        evaluate=evaluate,
        device=device,
        processor=processor,
        resume_other_data=args.resume_other_data,
    )
    if distributed.get_rank() == 0:
        data = f"{train_ann} ({len(dataset)} samples)"
        if isinstance(train_data, TaskMixture):
            data = ", ".join(
                f"{t} × {train_data.weights[t]:g} ({len(d)} samples)" for t, d in train_data.datasets.items()
            )
        print(
            f"training {args.model} ({model.num_parameters() / 1e6:.1f} M parameters) on {data} "
            f"for {config.max_steps} steps -> {out}",
            file=sys.stderr,
        )
    try:
        result = trainer.train(resume=not args.no_resume)
    except (TrainingSetupError, NoUsableData) as err:  # found before any step, or bad data
        print(f"glipv2 train: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingInterrupted as err:
        print(f"glipv2 train: {err}", file=sys.stderr)
        return err.exit_code
    except TrainingStopped as err:
        print(f"glipv2 train: {err}", file=sys.stderr)
        print(f"skipped: {skip_summary(trainer.skipped)}", file=sys.stderr)
        return 1
    except Interrupted as err:  # a second signal mid-step, or one during the final evaluation
        print(f"glipv2 train: stopped by {err.name}; {trainer.describe_last_checkpoint()}", file=sys.stderr)
        return err.exit_code
    if distributed.get_rank() == 0:
        print(
            f"done: {result['steps']} steps, last losses {result['losses']}, evaluation {result['eval']}; "
            f"model folder {out / 'model'}",
            file=sys.stderr,
        )
        print(f"skipped: {result['skipped_summary']}", file=sys.stderr)
    return 0
