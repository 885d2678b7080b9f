"""Converters from original checkpoints."""

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
