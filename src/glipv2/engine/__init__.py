"""Training: the configuration and the trainer (the losses live with the heads, `glipv2.modeling.heads`).

The names are imported on first use (PEP 562), so that `glipv2.engine.command` — the `glipv2 train`
sub-parser — can be imported to show its help without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

_LAZY: dict[str, str] = {"TrainConfig": ".train_config", "Trainer": ".trainer", "TrainingStopped": ".trainer"}

# the names of `_LAZY` (tests/test_lazy_imports.py checks they agree)
__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainingStopped",
]

if TYPE_CHECKING:
    from .train_config import TrainConfig
    from .trainer import Trainer, TrainingStopped


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
