"""Training: ATSS target assignment, the GLIPv2 losses, MLM token masking, DDP helpers, the trainer."""

from .atss import ATSSTargets, atss_assign, box_iou_legacy, centerness_targets
from .criterion import FlatOutputs, GLIPv2Criterion, LossConfig, generalized_iou_loss
from .mlm import MaskingVocab, mask_tokens
from .train_config import TrainConfig
from .trainer import Trainer, TrainingStopped

__all__ = ["ATSSTargets", "FlatOutputs", "GLIPv2Criterion", "LossConfig", "MaskingVocab", "TrainConfig", "Trainer",
           "TrainingStopped", "atss_assign", "box_iou_legacy", "centerness_targets", "generalized_iou_loss",
           "mask_tokens"]
