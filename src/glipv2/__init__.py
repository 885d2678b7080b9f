"""glipv2: GLIPv2 — unified localization and vision-language understanding — in plain PyTorch."""

from .inference import Detections, Predictor
from .loading import load_model
from .modeling import GLIPv2, GLIPv2Config, GLIPv2Output, build_model, get_config, list_models
from .processing import GLIPv2Processor

__version__ = "0.1.0"
__all__ = [
    "Detections",
    "GLIPv2",
    "GLIPv2Config",
    "GLIPv2Output",
    "GLIPv2Processor",
    "Predictor",
    "__version__",
    "build_model",
    "get_config",
    "list_models",
    "load_model",
]
