"""The GLIPv2 network: the core, the task heads on it, their losses, and the named variants."""

from .config import GLIPv2Config
from .core import GLIPv2Core
from .criterion import GLIPv2Criterion
from .glipv2 import GLIPv2
from .heads import LossConfig, TaskHead, register_head
from .outputs import CoreOutput, GLIPv2Output
from .registry import build_model, get_config, list_models

__all__ = [
    "CoreOutput",
    "GLIPv2",
    "GLIPv2Config",
    "GLIPv2Core",
    "GLIPv2Criterion",
    "GLIPv2Output",
    "LossConfig",
    "TaskHead",
    "build_model",
    "get_config",
    "list_models",
    "register_head",
]
