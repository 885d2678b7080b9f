"""Synthetic official checkpoints (random values, official names and shapes) for tests and benchmarks.

The shape listings (`key<TAB>(d0, d1, ...)`, one official tensor per line) come from instantiating
the official model; the buffers of such a file hold what our model derives from the config
(relative position indices, cell anchors), exactly as a real checkpoint of that config does.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..modeling.config import GLIPv2Config
from .checkpoint import build_shape_model
from .official import ours_to_official

_LINE = re.compile(r"(?P<key>\S+)\t\((?P<dims>(\d+(, \d+)*,?)?)\)")


def read_state_dict_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Parse a `key<TAB>(d0, d1, ...)` listing (Python tuple syntax, `(96,)` for 1-D)."""
    path = Path(path)
    shapes: dict[str, tuple[int, ...]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            raise ValueError(f"{path}:{number}: not 'key<TAB>(d0, d1, ...)': {line!r}")
        if m.group("key") in shapes:
            raise ValueError(f"{path}:{number}: duplicate key {m.group('key')}")
        shapes[m.group("key")] = tuple(int(d) for d in re.findall(r"\d+", m.group("dims")))
    return shapes


def derived_official_buffers(config: GLIPv2Config) -> dict[str, torch.Tensor]:
    """Official name -> value of every buffer our model derives from `config` and official files
    store (relative_position_index, cell_anchors)."""
    out: dict[str, torch.Tensor] = {}
    for name, buffer in build_shape_model(config).named_buffers():
        official = ours_to_official(name, config)
        if official is not None:
            out[official] = buffer.clone()
    return out


def synthetic_official_state_dict(
    shapes: dict[str, tuple[int, ...]], config: GLIPv2Config, seed: int = 0
) -> dict[str, torch.Tensor]:
    """An official-layout state dict (`module.` keys, in listing order): float32 values uniform in
    [-1, 1) — distinct per tensor, so a mix-up of two same-shaped tensors shows — and the derived
    buffers' true values. Keys of `shapes` that our model does not derive but that are buffers in
    official files cannot occur: every listed key is a parameter or a derived buffer."""
    buffers = derived_official_buffers(config)
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key in buffers:
            if tuple(buffers[key].shape) != shape:
                derived = tuple(buffers[key].shape)
                raise ValueError(f"{key}: listed as {shape}, but this config derives {derived}")
            state[key] = buffers[key]
        else:
            state[key] = torch.empty(shape).uniform_(-1.0, 1.0, generator=generator)
    return state
