"""`TrainConfig`: every training hyper-parameter (the model's live in `GLIPv2Config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..modeling.config import DataclassConfig, read_mapping

FREEZABLE = ("backbone", "fpn", "text_encoder", "head")


@dataclass
class TrainConfig(DataclassConfig):
    """Defaults follow the official GLIP solver (reference §2), scaled to small runs: AdamW with
    base / language learning rates, biases at 2× the rate and no weight decay, linear warm-up from
    1e-3 × the rate, cosine or step decay (steps at 67 % and 89 %), gradient-norm clip 1.0."""

    max_steps: int = 1000
    batch_size: int = 4  # per process
    grad_accumulation: int = 1
    lr: float = 1e-4  # SOLVER.BASE_LR
    language_lr: float = 1e-5  # SOLVER.LANG_LR: text encoder parameters
    weight_decay: float = 1e-4  # SOLVER.WEIGHT_DECAY
    bias_lr_factor: float = 2.0  # SOLVER.BIAS_LR_FACTOR; biases also get no weight decay
    warmup_steps: int = 100
    warmup_factor: float = 1e-3
    schedule: str = "cosine"  # "cosine" | "step" | "constant"
    step_milestones: tuple[float, ...] = (0.67, 0.89)  # fractions of max_steps
    step_gamma: float = 0.1
    clip_grad_norm: float = 1.0  # 0 = off
    amp: bool = True  # bf16 autocast on CUDA only; CPU stays fp32 (no fast bf16 here)
    ema_decay: float = 0.0  # 0 = off; official MODEL_EMA 0.999
    freeze: tuple[str, ...] = ()  # any of FREEZABLE
    prompt_tuning: bool = False  # train only the prompt embedding added to P̊ (official language_prompt_v2)
    min_sizes: tuple[int, ...] = (480, 560, 640, 720, 800)  # AUGMENT.MULT_MIN_SIZE_TRAIN
    max_size: int = 1333
    flip_probability: float = 0.5
    colour_strength: float = 0.2
    max_categories: int = 85  # class prompt length for detection data (RANDOM_SAMPLE_NEG)
    num_workers: int = 0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    eval_every: int = 0  # 0 = only at the end
    max_bad_steps: int = 5  # consecutive non-finite losses before training stops
    # epochs in a row without one usable batch (wrong image folder, every record bad) before
    # training stops instead of looping forever
    max_empty_epochs: int = 2
    # GLIPv2Config fields changed when the model is built or loaded (e.g. {"mlm_head": false,
    # "fusion_dropout": 0.0}) and LossConfig fields (e.g. {"use_inter": false}):
    # so that one file describes a whole recipe
    model_overrides: dict[str, Any] = field(default_factory=dict)
    losses: dict[str, Any] = field(default_factory=dict)
    # multi-task training: how often each task's batches come (detection, grounding, vqa, caption;
    # `glipv2.data.tasks`); a task given data but no weight gets 1, a weight of 0 leaves it out
    tasks: dict[str, float] = field(default_factory=dict)
    # answers given by fewer annotators-questions than this are left out of the VQA vocabulary
    vqa_min_answer_count: int = 1

    def __post_init__(self) -> None:
        self._coerce_tuples()
        problems = []
        if self.schedule not in ("cosine", "step", "constant"):
            problems.append(f"schedule must be cosine, step or constant, not {self.schedule!r}")
        unknown = sorted(set(self.freeze) - set(FREEZABLE))
        if unknown:
            problems.append(f"cannot freeze {unknown}; choose from {FREEZABLE}")
        for name in (
            "max_steps",
            "batch_size",
            "grad_accumulation",
            "max_bad_steps",
            "max_empty_epochs",
            "log_every",
            "max_size",
            "checkpoint_every",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.vqa_min_answer_count < 1:
            problems.append("vqa_min_answer_count must be >= 1")
        from ..data.tasks import TASK_HEADS

        if not isinstance(self.tasks, dict):
            problems.append("tasks must be a mapping of task name to sampling weight")
        else:
            unknown_tasks = sorted(set(self.tasks) - set(TASK_HEADS))
            if unknown_tasks:
                problems.append(
                    f"tasks: unknown task(s) {', '.join(unknown_tasks)}; known: {', '.join(TASK_HEADS)}"
                )
            if any(not isinstance(w, (int, float)) or w < 0 for w in self.tasks.values()):
                problems.append("tasks: weights must be numbers >= 0")
        if self.eval_every < 0 or self.warmup_steps < 0 or self.num_workers < 0:
            problems.append("eval_every, warmup_steps and num_workers must be >= 0")
        if self.lr <= 0 or self.language_lr < 0 or self.weight_decay < 0:
            problems.append("lr must be > 0, language_lr and weight_decay >= 0")
        from ..modeling.config import GLIPv2Config
        from ..modeling.heads import LossConfig

        for name, target in (("model_overrides", GLIPv2Config), ("losses", LossConfig)):
            value = getattr(self, name)
            if not isinstance(value, dict):
                problems.append(f"{name} must be a mapping of {target.__name__} fields")
                continue
            unknown = sorted(set(value) - set(target.__dataclass_fields__))
            if unknown:
                problems.append(f"{name}: unknown {target.__name__} field(s) {', '.join(unknown)}")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """From a JSON or YAML file of field: value pairs."""
        fmt = "yaml" if str(path).endswith((".yaml", ".yml")) else "json"
        return cls.from_dict(read_mapping(path, fmt, "a mapping of TrainConfig fields"))
