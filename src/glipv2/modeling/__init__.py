"""The GLIPv2 network and its parts."""

from .config import GLIPv2Config
from .glipv2 import GLIPv2
from .loading import load_model
from .outputs import GLIPv2Output
from .registry import build_model, get_config, list_models

__all__ = ["GLIPv2", "GLIPv2Config", "GLIPv2Output", "build_model", "get_config", "list_models", "load_model"]
