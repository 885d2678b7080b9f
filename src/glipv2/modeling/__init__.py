"""The GLIPv2 network: the core, the task heads on it, their losses, and the named variants.

The names are imported on first use (PEP 562): `glipv2.modeling.registry` and
`glipv2.modeling.config` — preset names, descriptions, configs — read without torch, which the
command line's `glipv2 models` and `--help` rely on to answer at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

# public name -> the submodule that defines it
_LAZY: dict[str, str] = {
    "COMPUTE_PATHS": ".config",
    "GLIPv2Config": ".config",
    "GLIPv2Core": ".core",
    "GLIPv2Criterion": ".criterion",
    "GLIPv2": ".glipv2",
    "LossConfig": ".heads",
    "TaskHead": ".heads",
    "register_head": ".heads",
    "CoreOutput": ".outputs",
    "GLIPv2Output": ".outputs",
    "build_model": ".registry",
    "get_config": ".registry",
    "list_models": ".registry",
}

# the names of `_LAZY` (tests/test_lazy_imports.py checks they agree)
__all__ = [
    "COMPUTE_PATHS",
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

if TYPE_CHECKING:
    from .config import COMPUTE_PATHS, GLIPv2Config
    from .core import GLIPv2Core
    from .criterion import GLIPv2Criterion
    from .glipv2 import GLIPv2
    from .heads import LossConfig, TaskHead, register_head
    from .outputs import CoreOutput, GLIPv2Output
    from .registry import build_model, get_config, list_models


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
