"""`load_model(name_or_path)`: one entry point for presets, model folders and hub ids."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .glipv2 import GLIPv2
from .registry import build_model, list_models


def load_model(name_or_path: str, *, warn: bool = True, **config_overrides: Any) -> GLIPv2:
    """A model folder written by `save_pretrained`, a Hugging Face hub id, or a preset name.

    A preset has no trained weights: it is built with random weights (the `glipv2_tiny` text
    encoder excepted), and — unless `warn=False` — a loud warning says so on stderr."""
    if Path(name_or_path).is_dir():
        return GLIPv2.from_pretrained(name_or_path, **config_overrides)
    if name_or_path in list_models():
        if warn:
            print(f"WARNING: {name_or_path!r} is a preset name, not trained weights: the model is built with RANDOM "
                  "weights and its detections mean nothing. Pass a model folder (glipv2 convert / save_pretrained) "
                  "or a hub id.", file=sys.stderr)
        return build_model(name_or_path, **config_overrides).eval()
    if name_or_path.count("/") == 1 and not Path(name_or_path).exists():
        return GLIPv2.from_pretrained(name_or_path, **config_overrides)
    raise ValueError(f"{name_or_path!r} is not a model folder, a hub id 'owner/name', or a preset "
                     f"({', '.join(list_models())})")
