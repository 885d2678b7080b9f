"""The training loop: one process on a CPU, or one process per GPU/CPU rank under `torchrun`.

Under several processes the model is wrapped in `DistributedDataParallel`: the model computes its
whole objective inside `forward` (train mode with targets), and the losses are normalised for the
global batch (positives averaged over ranks), so DDP's average of the ranks' gradients is the
gradient of the global-batch loss. The trainer knows nothing of the heads: each head's loss comes
out of the model's forward, and the MLM token corruption is done by the collator.

Checkpoints hold the model, optimizer, scheduler, EMA, every RNG state, the data position and
what the data was (annotation file and a sha256 of it), and are written atomically; a run killed at
any moment resumes from the last one and ends with the weights an uninterrupted run would have, and
a resume onto other data is refused unless asked for. SIGINT / SIGTERM finish the current step,
save a checkpoint and stop (`TrainingInterrupted`). Before the first step the output folder is
checked (writable, room for a checkpoint, no symlink / FIFO / device where a file goes); a data
loader that yields no usable batch for `max_empty_epochs` epochs stops training (`NoUsableData`)
instead of looping forever.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ..data.collate import EmptyBatch, GroundingCollator, SafeDataset, TrainingBatch
from ..modeling.glipv2 import GLIPv2
from ..modeling.heads import HeadInputs, LossConfig
from ..processing.processor import GLIPv2Processor
from ..utils import distributed
from ..utils.io import (
    DestinationError,
    Interrupted,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_not_special,
    check_writable_folder,
    interruptible,
    stop_signals_handled_by,
)
from .train_config import TrainConfig

CHECKPOINT_NAME = "last.pt"
METRICS_NAME = "metrics.jsonl"
PREVIOUS_METRICS_NAME = "metrics.previous.jsonl"  # the log of the run a fresh start replaced


OUTPUT_FILES = (CHECKPOINT_NAME, METRICS_NAME, PREVIOUS_METRICS_NAME, "train_config.json")


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses in a row); checkpoints are intact."""


class TrainingSetupError(ValueError):
    """Training cannot start as asked, found before the first step (an unwritable output folder or
    one without room for a checkpoint, an unreadable checkpoint, a checkpoint of other data); nothing
    was written."""


class NoUsableData(TrainingStopped):
    """The data loader yielded no usable batch for `max_empty_epochs` epochs in a row (with no
    usable sample at all: before the first step); the last checkpoint is intact."""


class CheckpointWriteError(TrainingStopped):
    """A checkpoint could not be written (disk full, folder made read-only); the previous one is
    intact (the new one goes to a temporary file first)."""


class TrainingInterrupted(TrainingStopped):
    """SIGINT or SIGTERM: the current step was finished and a checkpoint saved. `exit_code` is the
    shell's 128 + signal number (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


# --- optimisation ---------------------------------------------------------------------------------
def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Official solver groups: text-encoder parameters at `language_lr`, the rest at `lr`; every
    bias at `bias_lr_factor` × its rate and without weight decay."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("core.text_encoder."), "bias" in name), []).append(p)
    out = []
    for (language, bias), params in sorted(groups.items()):
        lr = config.language_lr if language else config.lr
        out.append(
            {
                "params": params,
                "lr": lr * (config.bias_lr_factor if bias else 1.0),
                "weight_decay": 0.0 if bias else config.weight_decay,
                "name": f"{'language' if language else 'main'}{'_bias' if bias else ''}",
            }
        )
    if not out:
        raise ValueError("nothing to train: every parameter is frozen")
    return out


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base rates at `step`: linear warm-up, then cosine / step / constant."""
    if step < config.warmup_steps:
        alpha = step / config.warmup_steps
        return config.warmup_factor * (1 - alpha) + alpha
    if config.schedule == "cosine":
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if config.schedule == "step":
        return config.step_gamma ** sum(step >= m * config.max_steps for m in config.step_milestones)
    return 1.0


def model_ema(model: nn.Module, decay: float) -> AveragedModel:
    """Exponential moving average of the model's parameters (official MODEL_EMA), with
    `torch.optim.swa_utils`. Its update is a lerp, so a frozen parameter — averaged with itself —
    stays bit-identical (a frozen pretrained text encoder must equal its source, so that saved
    weights can refer to it). Buffers are not averaged: the model's are derived constants."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def losses_switched_off(model: GLIPv2) -> bool:
    """Whether `model.loss_config` switches off a loss the model has the parameters for (e.g.
    use_inter=False for a model with the L_inter projection, use_mlm=False with an MLM head, or
    use_intra=False): those parameters then get no gradient, and DDP must be told to look for
    them (`find_unused_parameters`), else it never finishes the step's reduction and fails at the
    next forward. With every loss on, each trained parameter gets a gradient in every step (the
    heads' contract), and DDP is spared the per-step search of the autograd graph."""
    full = LossConfig.for_model(model.config)
    return any(
        getattr(full, f.name) and not getattr(model.loss_config, f.name)
        for f in dataclasses.fields(LossConfig)
        if f.name.startswith("use_")
    )


# the `TrainConfig.freeze` names -> the modules they stand for
FREEZE_TARGETS: dict[str, tuple[str, ...]] = {
    "backbone": ("core.backbone",),
    "fpn": ("core.fpn",),
    "text_encoder": ("core.text_encoder",),
    "head": ("core.fusion", "heads.grounding"),
}


def heads_left_out(model: GLIPv2, dataset: Any) -> bool:
    """Whether some step leaves a head without gradient: a multi-task run (a batch of one task skips
    the others' heads, and a caption batch the fusion's text -> image half), or a model with a head
    that the localisation batches of a single-task run never ask for."""
    asked_only = [  # heads that run only when a batch names them (VQA, captions)
        name
        for name, head in model.heads.items()
        if head.loss_runs_with is None and not head.wanted(HeadInputs(training=True, targets=[]))
    ]
    return hasattr(dataset, "epoch_batches") or bool(asked_only)


def freeze(model: GLIPv2, config: TrainConfig) -> list[nn.Module]:
    """Switch off gradients of the frozen parts; returns them (kept in eval mode while training,
    as the official FREEZE flags do). Prompt tuning trains only the prompt embedding on P̊, with
    every module in eval mode (no dropout, as official `language_prompt_v2`)."""
    if config.prompt_tuning:
        if model.prompt_embedding is None:
            raise ValueError(
                "prompt tuning needs a model with a prompt embedding "
                "(GLIPv2Config.prompt_embedding_rows, official value 1000)"
            )
        for p in model.parameters():
            p.requires_grad_(False)
        model.prompt_embedding.requires_grad_(True)
        return [model.core, *model.heads.values()]
    frozen = []
    for name in config.freeze:
        for path in FREEZE_TARGETS[name]:
            module = model.get_submodule(path)
            for p in module.parameters():
                p.requires_grad_(False)
            frozen.append(module)
    return frozen


# --- data order ------------------------------------------------------------------------------------
@dataclass
class DataPosition:
    """Where training is in the data: epoch and the number of batches of it already consumed."""

    epoch: int = 0
    batch: int = 0


def epoch_batches(
    num_samples: int, batch_size: int, seed: int, epoch: int, rank: int, world: int
) -> list[list[int]]:
    """This rank's batches of one epoch: a permutation drawn from (seed, epoch), cut into global
    batches of `batch_size × world` (the incomplete last one dropped), rank r taking slice r."""
    order = torch.randperm(
        num_samples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    ).tolist()
    global_size = batch_size * world
    return [
        order[i + rank * batch_size : i + (rank + 1) * batch_size]
        for i in range(0, num_samples - global_size + 1, global_size)
    ]


def data_identity(dataset: Any) -> dict[str, Any]:
    """What the training data is, so that a resume can tell whether it changed: the annotation file
    (found as `ann_file` on the dataset or on what it wraps, through `.dataset`) with its size and
    the sha256 of its bytes, and the number of samples. `fingerprint` is what is compared (a copy
    of the same file elsewhere is the same data); `description` is what is shown."""
    if isinstance(
        getattr(dataset, "datasets", None), dict
    ):  # a TaskMixture: each task's data, and the weights
        parts = {task: data_identity(d) for task, d in dataset.datasets.items()}
        weights = getattr(dataset, "weights", {})
        return {
            "description": "; ".join(
                f"{t} (weight {weights.get(t)}): {i['description']}" for t, i in parts.items()
            ),
            "fingerprint": " | ".join(f"{t}:{weights.get(t)}:{i['fingerprint']}" for t, i in parts.items()),
        }
    inner, ann = dataset, None
    for _ in range(8):  # wrappers (SafeDataset, Subset, ...) hold the dataset as `.dataset`
        ann = getattr(inner, "ann_file", None)
        if ann is not None or not hasattr(inner, "dataset"):
            break
        inner = inner.dataset
    n = len(dataset)
    if ann is None or not Path(ann).is_file():
        return {"description": f"{type(dataset).__name__} of {n} samples", "fingerprint": f"samples={n}"}
    digest = hashlib.sha256()
    # a VQA dataset reads two files: the questions count as much as the annotations
    files = [ann, *([q] if (q := getattr(inner, "questions_file", None)) and Path(q) != Path(ann) else [])]
    for file in files:
        with open(file, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    size = sum(Path(file).stat().st_size for file in files)
    return {
        "description": f"{ann}, {size} bytes, sha256 {digest.hexdigest()[:12]}, {n} samples",
        "fingerprint": f"sha256={digest.hexdigest()} samples={n}",
        "ann_file": str(ann),
    }


_SAMPLE_PREFIX = re.compile(r"^sample \d+: ")
NO_USABLE_BATCH = "batch with no usable sample (on some rank)"


def skip_summary(skipped: dict[str, int]) -> str:
    """The skip counts in one line, grouped by reason: "6 samples skipped (6 × no such image file,
    e.g. sample 0: /data/0.png: no such image file); 3 batches with no usable sample; 2 × box with
    unknown category". The counts' keys name each sample ("sample 17: PATH: why"), so samples are
    grouped by the "why" (paths, quoted names and numbers left out)."""
    samples: dict[str, list[Any]] = {}
    others: list[str] = []
    for reason, count in sorted(skipped.items(), key=lambda kv: -kv[1]):
        if _SAMPLE_PREFIX.match(reason):
            why = _SAMPLE_PREFIX.sub("", reason)
            head, sep, tail = why.partition(": ")
            if sep and ("/" in head or "." in head):  # "PATH: why"
                why = tail
            why = re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'...'", why))
            group = samples.setdefault(why, [0, reason])
            group[0] += count
        elif reason == NO_USABLE_BATCH:
            others.append(f"{count} batch{'es' if count != 1 else ''} with no usable sample")
        else:
            others.append(f"{count} × {reason}")
    parts = []
    if samples:
        total = sum(c for c, _ in samples.values())
        groups = sorted(samples.items(), key=lambda kv: -kv[1][0])
        shown = ", ".join(f"{c} × {why}, e.g. {example}" for why, (c, example) in groups[:3])
        more = f", and {len(groups) - 3} other reasons" if len(groups) > 3 else ""
        parts.append(f"{total} sample{'s' if total != 1 else ''} skipped ({shown}{more})")
    parts.extend(others)
    return "; ".join(parts) if parts else "nothing skipped"


def checkpoint_size_estimate(model: nn.Module, ema: bool) -> int:
    """Bytes a checkpoint takes at least: the state dict, AdamW's two moments of every trained
    parameter, the EMA copy of the parameters (the pickled container adds a little)."""
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = list(model.parameters())
    trained = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    averaged = sum(p.numel() * p.element_size() for p in params) if ema else 0
    return state + 2 * trained + averaged


# --- the trainer ------------------------------------------------------------------------------------
class Trainer:
    """Train a `GLIPv2` on grounding samples with the GLIPv2 losses.

    dataset: items are `GroundingSample`s (wrap it in `SafeDataset` with the augmentations);
    evaluate: optional `fn(model) -> dict of metrics`, run every `eval_every` steps and at the end;
    resume_other_data: resume a checkpoint written for other training data (refused otherwise).
    """

    def __init__(
        self,
        model: GLIPv2,
        dataset: SafeDataset,
        collator: GroundingCollator,
        config: TrainConfig,
        output_dir: str | os.PathLike[str],
        loss_config: LossConfig | None = None,
        evaluate: Callable[[GLIPv2], dict[str, Any]] | None = None,
        device: str | torch.device | None = None,
        processor: GLIPv2Processor | None = None,
        resume_other_data: bool = False,
    ) -> None:
        self.config = config
        self.resume_other_data = resume_other_data
        self.output_dir = Path(output_dir)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.to(self.device)
        self.dataset = dataset
        self.collator = collator
        self.evaluate = evaluate
        self.processor = processor if processor is not None else getattr(collator, "processor", None)
        self.rank, self.world = distributed.get_rank(), distributed.get_world_size()
        self.frozen = freeze(model, config)
        model.loss_config = loss_config or LossConfig.for_model(model.config, **config.losses)
        # every rank starts from rank 0's weights: DDP broadcasts them when it wraps the model
        self.network: nn.Module = model
        if self.world > 1:
            self.network = DistributedDataParallel(
                model,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=losses_switched_off(model) or heads_left_out(model, dataset),
            )
        # foreach: one fused update over all tensors (the per-tensor loop is slow on CPU)
        self.optimizer = torch.optim.AdamW(
            param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay, foreach=True
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config))
        self.ema = model_ema(model, config.ema_decay) if config.ema_decay > 0 else None
        self.step = 0
        self.position = DataPosition()
        self.bad_steps = 0
        self.skipped: Counter[str] = Counter()
        self._data_identity: dict[str, Any] | None = None
        self._stop_signal: int | None = None  # set by the SIGINT / SIGTERM handler of `train`

    @property
    def data_identity(self) -> dict[str, Any]:
        """`data_identity(self.dataset)`, computed once (it reads the annotation file)."""
        if self._data_identity is None:
            self._data_identity = data_identity(self.dataset)
        return self._data_identity

    # --- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS_NAME

    def save_checkpoint(self, path: Path | None = None) -> Path:
        """Everything needed to continue exactly; written to a temporary file, then renamed."""
        path = path or self.checkpoint_path
        # each rank's own RNG streams and data position (a collective: every rank comes here)
        local = {
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            },
            "position": (self.position.epoch, self.position.batch),
        }
        per_rank: list[Any] = [local]
        if self.world > 1:
            per_rank = [None] * self.world
            dist.all_gather_object(per_rank, local)
        if self.rank != 0:
            return path
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "step": self.step,
            "per_rank": per_rank,
            "bad_steps": self.bad_steps,
            "skipped": dict(self.skipped),
            "train_config": self.config.to_dict(),
            "model_config": self.model.config.to_dict(),
            "data": self.data_identity,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "xb") as f:
            try:
                torch.save(state, f)
            except RuntimeError as err:
                # torch reports a failed write (disk full) as a RuntimeError, the OSError its context
                if isinstance(err.__context__, OSError):
                    raise err.__context__ from None
                raise
            # on disk before the rename: after a power cut the name holds the old or the new one
            f.flush()
            os.fsync(f.fileno())
        return path

    def save_model(self, directory: Path) -> Path:
        """`save_pretrained` of the trained model and its processor; a frozen pretrained text
        encoder is referred to, not copied (the folder shrinks by the encoder's size), unless it no
        longer equals its source."""
        if self.processor is not None:
            self.processor.save_pretrained(directory)
        if "text_encoder" in self.config.freeze and self.model.config.text_weights:
            try:
                return self.model.save_pretrained(directory, reference_text_weights=True)
            except ValueError:
                pass  # e.g. weights loaded from elsewhere: keep them with the model
        return self.model.save_pretrained(directory)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> dict[str, Any] | None:
        """Continue from the checkpoint at `path`; returns the data record it was written for (None
        for a checkpoint older than that record). Raises `TrainingSetupError`, with nothing
        changed, for a file that is not a readable checkpoint, one written by another number of
        processes, or one of other training data (unless `resume_other_data`)."""
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
            if not isinstance(state, dict) or not {"model", "step", "per_rank"} <= set(state):
                raise ValueError("not a glipv2 training checkpoint")
        except Exception as err:  # noqa: BLE001 - unpickling raises anything: EOFError, UnpicklingError, ...
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise TrainingSetupError(
                f"{path}: cannot read the checkpoint ({why}); start over without resuming, or remove it"
            ) from None
        per_rank = state["per_rank"]
        if len(per_rank) != self.world:
            raise TrainingSetupError(
                f"{path} was written by {len(per_rank)} process(es); resume it with as many "
                f"(this run has {self.world})"
            )
        saved_data = state.get("data")
        if (
            saved_data is not None
            and saved_data.get("fingerprint") != self.data_identity["fingerprint"]
            and not self.resume_other_data
        ):
            raise TrainingSetupError(
                f"{path} was written at step {state['step']} for other data "
                f"({saved_data.get('description')}), not {self.data_identity['description']}: resume onto this data only when asked "
                "(--resume-other-data), or start over (--no-resume) in another folder"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.bad_steps = int(state["bad_steps"])
        self.skipped = Counter(state["skipped"])
        mine = per_rank[self.rank]
        self.position = DataPosition(*mine["position"])
        rng = mine["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        return saved_data

    def check_output(self) -> None:
        """Before any work: the output folder can be written, has room for a checkpoint next to the
        one already there (the new one is written beside it, then renamed), and holds no symlink,
        FIFO or device where training writes a file. Raises `TrainingSetupError`; every rank
        raises when rank 0 does (rank 0 alone writes)."""
        problem = ""
        if self.rank == 0:
            try:
                if self.output_dir.exists() and not self.output_dir.is_dir():
                    raise DestinationError(f"{self.output_dir}: exists and is not a folder")
                for name in OUTPUT_FILES:
                    check_not_special(self.output_dir / name)
                check_writable_folder(self.output_dir, str(self.output_dir))
                existing = self.output_dir
                while not existing.exists():
                    existing = existing.parent
                free = shutil.disk_usage(existing).free
                need = checkpoint_size_estimate(self.model, self.ema is not None)
                if free < need:
                    raise DestinationError(
                        f"{self.output_dir}: {free / 1e6:.1f} MB free, a checkpoint needs about "
                        f"{need / 1e6:.1f} MB (disk full?)"
                    )
            except DestinationError as err:
                problem = str(err)
        if self.world > 1:
            flag = torch.tensor([float(bool(problem))], device=self.device)
            dist.all_reduce(flag)
            if flag.item() > 0 and not problem:
                problem = f"rank 0 cannot write the output folder {self.output_dir}"
        if problem:
            raise TrainingSetupError(problem)

    def _clean_stale_temporaries(self) -> None:
        """Remove the temporary checkpoint files of killed runs (`.last.pt.PID.TOKEN.tmp` whose
        process is gone): a SIGKILL during a write leaves one, and they would fill the disk."""
        for tmp in self.output_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"):
            try:
                pid = int(tmp.name.split(".")[-3])
                if pid != os.getpid():
                    os.kill(pid, 0)  # raises when no such process
                    continue  # a live process (another run in this folder?) owns it
            except ProcessLookupError:
                pass
            except (ValueError, IndexError, PermissionError):
                continue
            tmp.unlink(missing_ok=True)

    def _trim_log(self) -> None:
        """On resume: keep only the log's complete records up to the checkpoint's step (the steps
        after it are done again, and a kill may have cut the last line)."""
        if not self.metrics_path.is_file():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines(keepends=True):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if isinstance(record, dict) and line.endswith("\n") and int(record.get("step", 0)) <= self.step:
                kept.append(line)
        atomic_write_text(self.metrics_path, "".join(kept))

    # --- data -----------------------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        """Batches of one epoch on each rank (the same on every rank)."""
        if hasattr(self.dataset, "epoch_batches"):
            return len(self.epoch_plan(0))
        return len(self.dataset) // (self.config.batch_size * self.world)

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch`: the dataset's own plan (a `TaskMixture`: one task per
        batch), else one seeded permutation of all samples."""
        cfg = self.config
        if hasattr(self.dataset, "epoch_batches"):
            return self.dataset.epoch_batches(cfg.batch_size, cfg.seed, epoch, self.rank, self.world)
        return epoch_batches(len(self.dataset), cfg.batch_size, cfg.seed, epoch, self.rank, self.world)

    def batches(self) -> Iterator[TrainingBatch | EmptyBatch]:
        """Batches from the saved data position on, epoch after epoch, forever."""
        while True:
            epoch = self.position.epoch
            self.dataset.set_epoch(epoch)
            plan = self.epoch_plan(epoch)
            if not plan:
                raise ValueError(
                    f"the dataset has {len(self.dataset)} samples, fewer than one global batch "
                    f"({self.config.batch_size} × {self.world})"
                )
            # a private generator: creating a loader iterator draws a seed, and drawing it from the
            # global RNG would make a resumed run's dropout differ from an uninterrupted one
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=plan[self.position.batch :],
                collate_fn=self.collator,
                num_workers=self.config.num_workers,
                generator=torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch),
            )
            for batch in loader:
                self.position.batch += 1
                yield batch
            self.position = DataPosition(epoch + 1, 0)

    # --- one optimisation step ---------------------------------------------------------------------
    def _autocast(self) -> Any:
        if self.config.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()  # CPU: fp32 (no fast bf16 on this class of machine)

    def _losses(self, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        with self._autocast():
            return self.network(
                batch.pixel_values,
                batch.input_ids,
                batch.attention_mask,
                batch.image_sizes,
                targets=batch.targets,
                heads=batch.heads,
            )

    def train_step(self, micro_batches: list[TrainingBatch]) -> dict[str, float] | None:
        """Forward/backward over the micro-batches, then one optimizer step; None when the
        gradient norm was not finite (a non-finite loss makes it so; the step is skipped on every
        rank alike, since the norm is taken after DDP's all-reduce, weights untouched)."""
        self.model.train()
        for module in self.frozen:
            module.eval()
        self.optimizer.zero_grad(set_to_none=True)
        totals: Counter[str] = Counter()
        produced: Counter[str] = Counter()  # micro-batches that gave each loss (tasks may differ)
        for index, batch in enumerate(micro_batches):
            # DDP all-reduces the gradients in the last micro-batch's backward only
            last = index == len(micro_batches) - 1
            sync = nullcontext() if last or self.world == 1 else self.network.no_sync()  # type: ignore[operator]
            with sync:
                losses = self._losses(batch.to(self.device))
                (losses["loss"] / len(micro_batches)).backward()
            for k, v in losses.items():
                totals[k] += float(v.detach())
                produced[k] += 1
        # a parameter that no active loss reaches keeps grad None: AdamW leaves it alone (no decay)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(trained, self.config.clip_grad_norm or float("inf"))
        if not bool(torch.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        for k in totals:
            totals[k] /= produced[k]
        if self.world > 1:
            for k in list(totals):
                totals[k] = float(distributed.all_reduce_mean(totals[k], self.device))
        return dict(totals)

    # --- the loop ---------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:  # disk full, folder made read-only
            raise CheckpointWriteError(
                f"cannot write the log {self.metrics_path} ({err.strerror or err}): training stopped at step "
                f"{self.step}; {self.describe_last_checkpoint()}"
            ) from None

    def run_evaluation(self) -> dict[str, Any]:
        if self.evaluate is None or self.rank != 0:
            return {}
        # the averaged weights are evaluated where they are; the live ones keep training
        model = self.ema.module if self.ema is not None else self.model
        metrics = self.evaluate(model.eval())
        self._log({"step": self.step, "eval": metrics})
        return metrics

    @contextmanager
    def _stop_at_a_step_boundary(self) -> Iterator[None]:
        """While training, SIGINT and SIGTERM ask for a stop: the current step finishes, a
        checkpoint is saved and `TrainingInterrupted` raised (stopping mid-step, inside the
        optimizer update, would leave weights no checkpoint should hold). A second signal stops at
        once (`Interrupted`), the last checkpoint intact. Outside the main thread, where handlers
        cannot be set, it does nothing."""
        self._stop_signal = None

        def handler(signum: int, _frame: object) -> None:
            if self._stop_signal is not None:
                raise Interrupted(signum)
            self._stop_signal = signum

        with stop_signals_handled_by(handler):
            yield

    def _agreed_stop_signal(self) -> int:
        """The stop signal received by any rank (0 for none): every rank stops at the same step,
        since saving a checkpoint is a collective."""
        signum = self._stop_signal or 0
        if self.world > 1:
            flag = torch.tensor([float(signum)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        return signum

    def _save_or_stop(self) -> None:
        """`save_checkpoint`, a write failure (disk full, read-only folder) turned into a
        `CheckpointWriteError` naming the intact previous checkpoint."""
        try:
            self.save_checkpoint()
        except OSError as err:
            raise CheckpointWriteError(
                f"cannot write the checkpoint of step {self.step} to {self.output_dir} "
                f"({err.strerror or err}): training stopped; {self.describe_last_checkpoint()}"
            ) from None

    def describe_last_checkpoint(self) -> str:
        """Which checkpoint survives a failure, for the messages."""
        if not self.checkpoint_path.is_file():
            return "no checkpoint was written before"
        try:
            step = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)["step"]
        except Exception:  # noqa: BLE001 - only for the message
            return f"the last good checkpoint is {self.checkpoint_path}"
        return f"the last good checkpoint, {self.checkpoint_path} (step {step}), is intact"

    def _stop_for_signal(self, signum: int, bar: tqdm) -> None:
        self._save_or_stop()
        bar.close()
        name = signal.Signals(signum).name
        raise TrainingInterrupted(
            f"stopped by {name} at step {self.step}: checkpoint {self.checkpoint_path} saved; "
            "run the same command again to resume",
            signum,
        )

    def train(self, resume: bool = True) -> dict[str, Any]:
        """Train to `max_steps` (from the last checkpoint of `output_dir` when `resume`); returns
        the last logged losses, the final evaluation, the skip counts and their one-line summary.

        Raises `TrainingSetupError` before any work (unwritable output, checkpoint of other data),
        `TrainingInterrupted` after SIGINT / SIGTERM (checkpoint saved), `NoUsableData` when
        `max_empty_epochs` epochs in a row yield no usable batch, `CheckpointWriteError` when a
        checkpoint cannot be written, `TrainingStopped` after `max_bad_steps` non-finite losses."""
        cfg = self.config
        self.check_output()
        # a symlink there is refused by check_output, so is_file() follows no link
        resumed = resume and self.checkpoint_path.is_file()
        if resumed:
            saved_data = self.load_checkpoint(self.checkpoint_path)
            if self.rank == 0:
                now = self.data_identity["description"]
                if saved_data is None:
                    what = f"{now}; the checkpoint does not record its data"
                elif saved_data.get("fingerprint") != self.data_identity["fingerprint"]:
                    what = f"{now}; the checkpoint was written for {saved_data.get('description')}"
                else:
                    what = now
                print(f"resuming from step {self.step} (data {what})", file=sys.stderr, flush=True)
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._clean_stale_temporaries()
            if resumed:
                self._trim_log()
            elif self.metrics_path.is_file():  # a fresh run's log must not continue an older run's
                self.metrics_path.replace(self.output_dir / PREVIOUS_METRICS_NAME)
            atomic_write_json(self.output_dir / "train_config.json", cfg.to_dict(), indent=1, end="\n")
        with self._stop_at_a_step_boundary():
            last = self._loop()
        # the last checkpoint is written: a signal from here on stops at once (`Interrupted`)
        with interruptible():
            if self.ema is not None:
                with torch.no_grad():
                    for live, averaged in zip(self.model.parameters(), self.ema.module.parameters()):
                        live.copy_(averaged)
            metrics = self.run_evaluation()
            if self.rank == 0:
                try:
                    self.save_model(self.output_dir / "model")
                except OSError as err:
                    raise CheckpointWriteError(
                        f"cannot write the model folder {self.output_dir / 'model'} ({err.strerror or err}); "
                        f"{self.describe_last_checkpoint()}"
                    ) from None
        return {
            "losses": last,
            "eval": metrics,
            "skipped": dict(self.skipped),
            "skipped_summary": skip_summary(self.skipped),
            "steps": self.step,
        }

    def _loop(self) -> dict[str, float]:
        """The steps from `self.step` to `max_steps`; returns the last step's losses."""
        cfg = self.config
        data = self.batches()
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=self.rank != 0,
            dynamic_ncols=True,
        )
        last: dict[str, float] = {}
        window_start, window_steps = time.perf_counter(), 0
        # per task, the losses of the steps since the last log line (a multi-task run logs their means)
        window: dict[str, list[dict[str, float]]] = {}
        # unusable batches in a row: `max_empty_epochs` epochs of them stop training (else a wrong
        # image folder would loop forever); counted on the ranks' agreed decisions, so every rank
        # stops together
        empty_run, empty_limit = 0, cfg.max_empty_epochs * max(1, self.batches_per_epoch())
        try:  # the bar closed first, so that an error's line starts a line of its own
            while self.step < cfg.max_steps:
                signum = self._agreed_stop_signal()
                if signum:
                    self._stop_for_signal(signum, bar)
                micro = []
                while len(micro) < cfg.grad_accumulation:
                    batch = next(data)
                    unusable = isinstance(batch, EmptyBatch)
                    if self.world > 1:  # skip together, so the ranks' data positions stay aligned
                        flag = torch.tensor([float(unusable)], device=self.device)
                        dist.all_reduce(flag)
                        unusable = bool(flag.item() > 0)
                    self.skipped.update(batch.skipped)
                    if unusable:
                        self.skipped[NO_USABLE_BATCH] += 1
                        empty_run += 1
                        if empty_run >= empty_limit:
                            bar.close()
                            raise NoUsableData(self._no_data_message(empty_run))
                        # a skipped batch leaves a consistent state to save (micro holds nothing yet)
                        if not micro:
                            signum = self._agreed_stop_signal()
                            if signum:
                                self._stop_for_signal(signum, bar)
                        continue
                    empty_run = 0
                    micro.append(batch)
                losses = self.train_step(micro)
                if losses is None:
                    self.bad_steps += 1
                    self._log(
                        {
                            "step": self.step,
                            "skipped_step": "non-finite loss or gradient",
                            "in_a_row": self.bad_steps,
                        }
                    )
                    bar.write(
                        f"step {self.step}: non-finite loss or gradient, step skipped ({self.bad_steps} in a row)"
                    )
                    if self.bad_steps >= cfg.max_bad_steps:
                        bar.close()
                        raise TrainingStopped(
                            f"{self.bad_steps} non-finite losses or gradients in a row at step {self.step}: training "
                            f"stopped; the "
                            f"last good checkpoint is {self.checkpoint_path} (lower the learning rate or check the data)"
                        )
                    continue
                self.bad_steps = 0
                self.step += 1
                window_steps += 1
                last = losses
                tasks = sorted({b.task for b in micro})
                window.setdefault("+".join(tasks), []).append(losses)
                bar.update(1)
                bar.set_postfix(loss=f"{losses['loss']:.3f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    elapsed = time.perf_counter() - window_start
                    record = {
                        "step": self.step,
                        "epoch": self.position.epoch,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        **losses,
                        "it_per_s": window_steps / elapsed if elapsed > 0 else None,
                        "skipped": dict(self.skipped),
                    }
                    if len(window) > 1 or "grounding" not in window:  # several tasks: say which is which
                        record["task"] = "+".join(tasks)
                        record["tasks"] = {
                            task: {"steps": len(steps)}
                            | {k: sum(s[k] for s in steps) / len(steps) for k in steps[-1]}
                            for task, steps in sorted(window.items())
                        }
                    self._log(record)
                    window_start, window_steps, window = time.perf_counter(), 0, {}
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                    self.run_evaluation()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                    self._save_or_stop()
        finally:
            bar.close()
        return last

    def _no_data_message(self, batches: int) -> str:
        epochs = self.config.max_empty_epochs
        where = (
            "no usable training sample: training not started"
            if self.step == 0
            else f"the data yielded no usable batch at step {self.step}: training stopped"
        )
        return (
            f"{where} ({epochs} epoch(s) of {len(self.dataset)} samples in a row, {batches} batches, none "
            f"usable; skipped: {skip_summary(self.skipped)}); check the image folder and the annotations"
        )
