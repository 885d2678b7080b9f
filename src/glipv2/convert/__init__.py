"""Converters from original checkpoints."""

from .official import (
    ConversionReport,
    convert_state_dict,
    load_official_checkpoint,
    official_to_ours,
    ours_to_official,
)

__all__ = ["ConversionReport", "convert_state_dict", "load_official_checkpoint", "official_to_ours",
           "ours_to_official"]
