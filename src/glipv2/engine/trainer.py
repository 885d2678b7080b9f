"""The training loop: one process on a CPU, or one process per GPU/CPU rank under `torchrun`.

Under several processes the model is wrapped in `DistributedDataParallel`: the model computes its
whole objective inside `forward` (train mode with targets), and the losses are normalised for the
global batch (positives averaged over ranks), so DDP's average of the ranks' gradients is the
gradient of the global-batch loss. The trainer knows nothing of the heads: each head's loss comes
out of the model's forward, and the MLM token corruption is done by the collator.

Checkpoints hold the model, optimizer, scheduler, EMA, every RNG state and the data position, and
are written atomically; a run killed at any moment resumes from the last one and ends with the
weights an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import nullcontext
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

from ..data.collate import GroundingCollator, SafeDataset, TrainingBatch
from ..modeling.glipv2 import GLIPv2
from ..modeling.heads import LossConfig
from ..processing.processor import GLIPv2Processor
from ..utils import distributed
from ..utils.io import atomic_path, atomic_write_json
from .train_config import TrainConfig

CHECKPOINT_NAME = "last.pt"
METRICS_NAME = "metrics.jsonl"
PREVIOUS_METRICS_NAME = "metrics.previous.jsonl"  # the log of the run a fresh start replaced


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses in a row); checkpoints are intact."""


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


# --- the trainer ------------------------------------------------------------------------------------
class Trainer:
    """Train a `GLIPv2` on grounding samples with the GLIPv2 losses.

    dataset: items are `GroundingSample`s (wrap it in `SafeDataset` with the augmentations);
    evaluate: optional `fn(model) -> dict of metrics`, run every `eval_every` steps and at the end.
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
    ) -> None:
        self.config = config
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
                find_unused_parameters=losses_switched_off(model),
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
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
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

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.bad_steps = int(state["bad_steps"])
        self.skipped = Counter(state["skipped"])
        per_rank = state["per_rank"]
        if len(per_rank) != self.world:
            raise ValueError(
                f"{path} was written by {len(per_rank)} process(es); resume it with as many "
                f"(this run has {self.world})"
            )
        mine = per_rank[self.rank]
        self.position = DataPosition(*mine["position"])
        rng = mine["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)

    # --- data -----------------------------------------------------------------------------------
    def batches(self) -> Iterator[TrainingBatch | None]:
        """Batches from the saved data position on, epoch after epoch, forever."""
        while True:
            epoch = self.position.epoch
            self.dataset.set_epoch(epoch)
            plan = epoch_batches(
                len(self.dataset), self.config.batch_size, self.config.seed, epoch, self.rank, self.world
            )
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
        for index, batch in enumerate(micro_batches):
            # DDP all-reduces the gradients in the last micro-batch's backward only
            last = index == len(micro_batches) - 1
            sync = nullcontext() if last or self.world == 1 else self.network.no_sync()  # type: ignore[operator]
            with sync:
                losses = self._losses(batch.to(self.device))
                (losses["loss"] / len(micro_batches)).backward()
            for k, v in losses.items():
                totals[k] += float(v.detach()) / len(micro_batches)
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
        if self.world > 1:
            for k in list(totals):
                totals[k] = float(distributed.all_reduce_mean(totals[k], self.device))
        return dict(totals)

    # --- the loop ---------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def run_evaluation(self) -> dict[str, Any]:
        if self.evaluate is None or self.rank != 0:
            return {}
        # the averaged weights are evaluated where they are; the live ones keep training
        model = self.ema.module if self.ema is not None else self.model
        metrics = self.evaluate(model.eval())
        self._log({"step": self.step, "eval": metrics})
        return metrics

    def train(self, resume: bool = True) -> dict[str, Any]:
        """Train to `max_steps` (from the last checkpoint of `output_dir` when `resume`); returns
        the last logged losses and the final evaluation."""
        cfg = self.config
        resumed = resume and self.checkpoint_path.is_file()
        if resumed:
            self.load_checkpoint(self.checkpoint_path)
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if (
                not resumed and self.metrics_path.is_file()
            ):  # a fresh run's log must not continue an older run's
                self.metrics_path.replace(self.output_dir / PREVIOUS_METRICS_NAME)
            atomic_write_json(self.output_dir / "train_config.json", cfg.to_dict(), indent=1, end="\n")
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
        while self.step < cfg.max_steps:
            micro = []
            while len(micro) < cfg.grad_accumulation:
                batch = next(data)
                unusable = batch is None
                if self.world > 1:  # skip together, so the ranks' data positions stay aligned
                    flag = torch.tensor([float(unusable)], device=self.device)
                    dist.all_reduce(flag)
                    unusable = bool(flag.item() > 0)
                if unusable:
                    self.skipped["batch with no usable sample (on some rank)"] += 1
                    continue
                self.skipped.update(batch.skipped)  # type: ignore[union-attr]
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
            bar.update(1)
            bar.set_postfix(loss=f"{losses['loss']:.3f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                elapsed = time.perf_counter() - window_start
                self._log(
                    {
                        "step": self.step,
                        "epoch": self.position.epoch,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        **losses,
                        "it_per_s": window_steps / elapsed if elapsed > 0 else None,
                        "skipped": dict(self.skipped),
                    }
                )
                window_start, window_steps = time.perf_counter(), 0
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                self.run_evaluation()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        bar.close()
        if self.ema is not None:
            with torch.no_grad():
                for live, averaged in zip(self.model.parameters(), self.ema.module.parameters()):
                    live.copy_(averaged)
        metrics = self.run_evaluation()
        if self.rank == 0:
            self.save_model(self.output_dir / "model")
        return {"losses": last, "eval": metrics, "skipped": dict(self.skipped), "steps": self.step}
