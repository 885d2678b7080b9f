"""glipv2: GLIPv2 — unified localization and vision-language understanding — in plain PyTorch.

The public names are imported on first use (PEP 562), so that `import glipv2` — and with it
`glipv2 --help`, `glipv2 models` — does not pay for torch, transformers and PIL until a model,
a processor or a drawing is actually asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .utils.lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the module that defines it (relative to this package)
_LAZY: dict[str, str] = {
    "Detections": ".inference",
    "Predictor": ".inference",
    "draw_detections": ".inference",
    "draw_text_banner": ".inference",
    "load_model": ".loading",
    "GLIPv2": ".modeling",
    "GLIPv2Config": ".modeling",
    "GLIPv2Output": ".modeling",
    "build_model": ".modeling",
    "get_config": ".modeling",
    "list_models": ".modeling",
    "GLIPv2Processor": ".processing",
}

# the names of `_LAZY` (tests/test_lazy_imports.py checks they agree)
__all__ = [
    "Detections",
    "GLIPv2",
    "GLIPv2Config",
    "GLIPv2Output",
    "GLIPv2Processor",
    "Predictor",
    "__version__",
    "build_model",
    "draw_detections",
    "draw_text_banner",
    "get_config",
    "list_models",
    "load_model",
]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .inference import Detections, Predictor, draw_detections, draw_text_banner
    from .loading import load_model
    from .modeling import GLIPv2, GLIPv2Config, GLIPv2Output, build_model, get_config, list_models
    from .processing import GLIPv2Processor


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
