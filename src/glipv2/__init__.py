"""glipv2: GLIPv2 — unified localization and vision-language understanding — in plain PyTorch."""

from .modeling import GLIPv2, GLIPv2Config, GLIPv2Output, build_model, get_config, list_models

__version__ = "0.1.0"
__all__ = ["GLIPv2", "GLIPv2Config", "GLIPv2Output", "build_model", "get_config", "list_models", "__version__"]
