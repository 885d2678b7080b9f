"""Training: the configuration and the trainer (the losses live with the heads, `glipv2.modeling.heads`)."""

from .train_config import TrainConfig
from .trainer import Trainer, TrainingStopped

__all__ = ["TrainConfig", "Trainer", "TrainingStopped"]
