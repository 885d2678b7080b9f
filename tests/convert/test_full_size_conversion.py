"""Full-size conversion of synthetic GLIP-T, GLIP-T(A) and GLIP-L checkpoints.

Each checkpoint has every official tensor of the released architecture (names and shapes from
`shared/reference/<preset>_state_dict_shapes.tsv`) with random values, the true derived buffers,
and the extras released files may carry (position_ids, pooler). It goes through
`convert_checkpoint` to disk; the weights file must load strictly into the preset (checked on the
meta-device model: same keys and shapes, nothing left over), and mapping every tensor back with
`ours_to_official` must give the source tensors bit for bit. One checkpoint at a time (GLIP-L is
1.7 GB), freed as soon as it is on disk, and compared a few hundred MB at a time.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import glipv2
from glipv2.convert import build_shape_model, convert_checkpoint, load_official_checkpoint, ours_to_official
from glipv2.convert.synthetic import read_state_dict_shapes, synthetic_official_state_dict
from glipv2.modeling.glipv2 import load_state_dict_strict

# preset -> number of official tensors (glip_reference.md section 10)
PRESETS = {"glip_t": 745, "glip_t_a": 541, "glip_l": 1021}


def extras(hidden: int) -> dict[str, torch.Tensor]:
    """Tensors released files may hold that have no counterpart (the converter's ignore list)."""
    bert = "module.language_backbone.body.model."
    return {
        bert + "embeddings.position_ids": torch.arange(512).unsqueeze(0),
        bert + "pooler.dense.weight": torch.ones(hidden, hidden),
        bert + "pooler.dense.bias": torch.ones(hidden),
    }


@pytest.mark.parametrize(
    "preset",
    [pytest.param("glip_t"), pytest.param("glip_t_a"), pytest.param("glip_l", marks=pytest.mark.slow)],
)
def test_full_size_checkpoint_converts_loads_and_maps_back(
    preset: str, reference_dir: Path, tmp_path: Path
) -> None:
    try:
        check_full_size_conversion(preset, reference_dir, tmp_path)
    finally:
        # up to 3.4 GB per preset; pytest keeps the last runs' temporary folders, so free the disk now
        shutil.rmtree(tmp_path, ignore_errors=True)


def check_full_size_conversion(preset: str, reference_dir: Path, tmp_path: Path) -> None:
    config = glipv2.get_config(preset)
    shapes = read_state_dict_shapes(reference_dir / f"{preset}_state_dict_shapes.tsv")
    assert len(shapes) == PRESETS[preset]
    state = synthetic_official_state_dict(shapes, config, seed=1)
    ignored = extras(config.text_hidden_size)
    src = tmp_path / f"{preset}.pth"
    torch.save({"model": {**state, **ignored}, "iteration": 1}, src)
    del state
    release_freed_memory()

    out = tmp_path / "converted"
    report = convert_checkpoint(src, out, config)
    assert report.problems() == []
    assert sorted(report.ignored) == sorted(ignored)
    n_buffers = sum(config.swin_depths) + 5  # relative position indices + cell anchors
    assert len(report.derived) == n_buffers and len(report.converted) == len(shapes) - n_buffers

    model = build_shape_model(config)
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        names = list(weights.keys())
        # the strict loader of from_pretrained, on meta tensors with the file's shapes and dtypes
        load_state_dict_strict(
            model,
            {k: torch.empty(weights.get_slice(k).get_shape(), device="meta") for k in names},
            source=str(out),
        )
        assert {weights.get_slice(k).get_dtype() for k in names} == {"F32"}
    mapped_back: dict[str, str] = {}
    for batch in batches(names, out / "model.safetensors"):
        # both files memory-mapped anew per batch, so that at most one batch of pages stays resident
        source = load_official_checkpoint(src)
        with safe_open(str(out / "model.safetensors"), "pt") as weights:
            for name in batch:
                official = ours_to_official(name, config)
                assert official is not None, name
                assert torch.equal(weights.get_tensor(name), source[official]), name
                mapped_back[official] = name
        del source
        release_freed_memory()
    source_keys = set(load_official_checkpoint(src))
    assert set(mapped_back) | set(report.derived) | set(report.ignored) == source_keys
    assert len(mapped_back) == len(names)


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS: glibc keeps the synthetic checkpoint's freed tensors
    (most are below its mmap threshold) in the heap, and the conversion's peak would stack on them."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def batches(names: list[str], weights: Path, limit: int = 256 * 2**20) -> list[list[str]]:
    """`names` in file order, cut into runs of about `limit` bytes."""
    out: list[list[str]] = [[]]
    size = 0
    with safe_open(str(weights), "pt") as f:
        for name in names:
            shape = f.get_slice(name).get_shape()
            nbytes = 4 * int(torch.tensor(shape).prod().item()) if shape else 4
            if size + nbytes > limit and out[-1]:
                out.append([])
                size = 0
            out[-1].append(name)
            size += nbytes
    return out
