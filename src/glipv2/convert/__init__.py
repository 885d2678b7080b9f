"""Converters from original checkpoints.

The names are imported on first use (PEP 562), so that the `glipv2` command can show this
sub-command's help without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

# public name -> the module that defines it (tests/test_lazy_imports.py checks they agree with __all__)
_LAZY: dict[str, str] = {
    "ConversionError": ".official",
    "ConversionReport": ".official",
    "OFFICIAL_CHECKPOINTS": ".hub",
    "build_shape_model": ".checkpoint",
    "config_from_official_yaml": ".official_config",
    "convert_checkpoint": ".checkpoint",
    "convert_state_dict": ".official",
    "converted_model_dir": ".hub",
    "load_official_checkpoint": ".official",
    "load_text_config": ".official_config",
    "official_arch": ".hub",
    "official_checkpoint_config": ".hub",
    "official_to_ours": ".official",
    "ours_to_official": ".official",
    "resolve_config": ".official_config",
    "write_safetensors": ".checkpoint",
}

__all__ = [
    "OFFICIAL_CHECKPOINTS",
    "ConversionError",
    "ConversionReport",
    "build_shape_model",
    "config_from_official_yaml",
    "convert_checkpoint",
    "convert_state_dict",
    "converted_model_dir",
    "load_official_checkpoint",
    "load_text_config",
    "official_arch",
    "official_checkpoint_config",
    "official_to_ours",
    "ours_to_official",
    "resolve_config",
    "write_safetensors",
]

if TYPE_CHECKING:
    from .checkpoint import build_shape_model, convert_checkpoint, write_safetensors
    from .hub import OFFICIAL_CHECKPOINTS, converted_model_dir, official_arch, official_checkpoint_config
    from .official import (
        ConversionError,
        ConversionReport,
        convert_state_dict,
        load_official_checkpoint,
        official_to_ours,
        ours_to_official,
    )
    from .official_config import config_from_official_yaml, load_text_config, resolve_config

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
