"""Official GLIP `.pth` -> glipv2 model folder (`config.json`, `model.safetensors`, the processor's files).

Memory: the source is memory-mapped (`torch.load(mmap=True)`), the target model is built with its
parameters on the meta device (only shapes and dtypes; the derived buffers — Swin relative position
indices, cell anchors — are real, small and compared with the checkpoint's), and the weights file
is streamed tensor by tensor straight from the mapped source. Peak memory is therefore about the
checkpoint's size (its pages, once read) on top of the interpreter with torch imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from ..modeling.config import GLIPv2Config
from ..modeling.glipv2 import CONFIG_NAME, STATE_LAYOUT, WEIGHTS_NAME, GLIPv2
from ..processing.processor import PROCESSOR_NAME, TOKENIZER_DIR, GLIPv2Processor
from ..utils.io import DestinationError, atomic_write_text, check_destination
from .official import ConversionError, ConversionReport, convert_state_dict, load_official_checkpoint

# written next to the model files: where the weights came from and what the converter did
PROVENANCE_NAME = "conversion.json"

_SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device, buffers on the CPU.

    Each parameter is moved to meta as it is registered, before its initialiser runs, so at
    most one parameter is ever allocated for real. Not thread-safe: it patches `nn.Module`."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def build_shape_model(config: GLIPv2Config) -> GLIPv2:
    """`GLIPv2(config)` with every parameter on the meta device (no memory, no values) and real
    buffers: enough to know the state dict's names, shapes and dtypes and the derived buffers."""
    with _parameters_on_meta():
        return GLIPv2(config, load_text_weights=False)


def write_safetensors(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write `tensors` in the safetensors format, one tensor at a time.

    `safetensors.torch.save_file` writes from the tensors' own memory in current releases, but
    older ones that pyproject allows (>= 0.4) first copy every tensor into a bytes object (a
    second full copy of the model), and all refuse tensors that share storage. Here the header
    is computed from shapes alone and each tensor's bytes are written straight from its storage:
    a memory-mapped source tensor is read from the file, never copied."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: dtype {tensor.dtype} cannot be stored in safetensors")
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for tensor in tensors.values():
            if tensor.numel() == 0:
                continue
            flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            f.write(memoryview(flat.numpy()))


def convert_checkpoint(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: GLIPv2Config,
    allow_partial: bool = False,
    allow_pickle: bool = False,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert an official GLIP checkpoint into a folder that `GLIPv2.from_pretrained` loads.

    src: `{"model": state_dict, ...}` with `module.`-prefixed keys (other top-level entries such
    as optimizer / scheduler / iteration / an EMA copy are ignored), read with
    `weights_only=True` unless `allow_pickle`. config: the architecture the checkpoint holds
    (a preset, or `config_from_official_yaml`).

    Refuses (`ConversionError`, a `ValueError`, one line per key) official tensors without a
    counterpart, shape or derived-buffer mismatches, and tensors of ours the checkpoint does not
    provide; with `allow_partial` it converts anyway and leaves the latter at their random
    initialisation. The folder is written under a temporary sibling name and renamed at the end,
    so an interrupted conversion never leaves a half-written model folder behind; an existing
    `out_dir` is replaced only with `overwrite`, and only when it is a glipv2 model folder (see
    `check_replaceable`): a source checkpoint or unrelated files are never deleted. These checks,
    and whether `out_dir` can be written, come before the checkpoint is read."""
    src, out = Path(src), Path(out_dir)
    check_output_folder(out, [src], overwrite)
    official = load_official_checkpoint(src, allow_pickle=allow_pickle)
    model = build_shape_model(config)
    state, report = convert_state_dict(official, model, config)
    expected = model.state_dict()  # meta tensors: names, shapes, dtypes
    report.missing = sorted(k for k in expected if k not in state)
    problems = report.problems()
    if problems and not allow_partial:
        raise ConversionError(str(src), problems + _hints(official, report, config))
    if report.missing:
        state.update(_initial_values(config, report.missing))
    del model

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        config.save(tmp / CONFIG_NAME)
        write_safetensors(
            tmp / WEIGHTS_NAME,
            {k: state[k] for k in expected},
            metadata={
                "format": "pt",
                "library": "glipv2",
                "layout": STATE_LAYOUT,
                "converted_from": src.name,
            },
        )
        GLIPv2Processor.from_config(config).save_pretrained(tmp)
        atomic_write_text(tmp / PROVENANCE_NAME, json.dumps(_provenance(src, report), indent=2) + "\n")
        _move_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


# what a glipv2 model folder holds (config, weights, the processor's files, the converter's notes):
# `--overwrite` replaces a folder with nothing else in it
MODEL_FOLDER_ENTRIES = frozenset({CONFIG_NAME, WEIGHTS_NAME, PROCESSOR_NAME, TOKENIZER_DIR, PROVENANCE_NAME})


def check_output_folder(out: Path, inputs: list[Path], overwrite: bool) -> None:
    """Raise ValueError (one line) unless `out` may be written: not a symlink or a file, holding
    none of `inputs`, in a writable folder, and either absent or — with `overwrite` — a glipv2 model
    folder (`check_replaceable`)."""
    try:
        check_destination(out, inputs, folder=True)
    except DestinationError as err:
        raise ValueError(str(err)) from None
    if out.exists():
        if not overwrite:
            raise ValueError(f"{out}: already exists (pass overwrite=True / --overwrite to replace it)")
        check_replaceable(out)


def check_replaceable(out: Path) -> None:
    """Raise ValueError unless `out` is a glipv2 model folder — config.json and model.safetensors,
    and nothing but the files a conversion writes — or an empty folder, which `overwrite` may delete."""
    if not any(out.iterdir()):
        return
    if not (out / CONFIG_NAME).is_file() or not (out / WEIGHTS_NAME).is_file():
        raise ValueError(
            f"{out}: not a glipv2 model folder (no {CONFIG_NAME} and {WEIGHTS_NAME}); --overwrite replaces "
            "only model folders: choose another OUT_DIR"
        )
    others = sorted(p.name for p in out.iterdir() if p.name not in MODEL_FOLDER_ENTRIES)
    if others:
        raise ValueError(
            f"{out}: holds files that are not part of a model folder ({', '.join(others[:5])}); "
            "--overwrite would delete them: move them away or choose another OUT_DIR"
        )


# ------------------------------------------------------------------------------------------------
def _initial_values(config: GLIPv2Config, keys: list[str]) -> dict[str, torch.Tensor]:
    """Random-init values of `keys` (only with allow_partial; builds one real model)."""
    fresh = GLIPv2(config, load_text_weights=False).state_dict()
    return {k: fresh[k].detach().clone() for k in keys}


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    if not overwrite:  # appeared while converting
        raise ValueError(f"{out}: already exists (pass overwrite=True / --overwrite to replace it)")
    check_replaceable(out)  # it may have changed while converting
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _provenance(src: Path, report: ConversionReport) -> dict[str, object]:
    return {
        "source": src.name,
        "source_bytes": src.stat().st_size,
        "converted": len(report.converted),
        "derived": report.derived,
        "ignored": report.ignored,
        "unmapped": report.unmapped,
        "mismatched": report.mismatched,
        "left_at_initialisation": report.missing,
    }


_TEXT_ENCODER_KEYS = re.compile(r"(module\.)?language_backbone\.|text_encoder\.")
_BERT = "module.language_backbone.body.model."


def _hints(official: Mapping[str, torch.Tensor], report: ConversionReport, config: GLIPv2Config) -> list[str]:
    """A closing line for the likeliest cause of text-side problems: the checkpoint's BERT is not
    the config's (the YAML cannot tell a BERT's size)."""
    if not any(_TEXT_ENCODER_KEYS.match(k) for k in report.unmapped + report.mismatched + report.missing):
        return []
    text = config.text_encoder
    ours = (
        int(text["vocab_size"]),
        int(text["hidden_size"]),
        int(text.get("num_hidden_layers", 0)),
        int(text["intermediate_size"]),
    )
    words = official.get(_BERT + "embeddings.word_embeddings.weight")
    ffn = official.get(_BERT + "encoder.layer.0.intermediate.dense.weight")
    theirs_text = ""
    if words is not None and ffn is not None and words.ndim == 2 and ffn.ndim == 2:
        layer = re.compile(re.escape(_BERT) + r"encoder\.layer\.(\d+)\.")
        layers = {m.group(1) for k in official if (m := layer.match(k))}
        theirs = (words.shape[0], words.shape[1], len(layers), ffn.shape[0])
        if theirs == ours:  # same BERT: the text-side problems have another cause
            return []
        theirs_text = " (checkpoint: vocab {}, hidden {}, {} layers, FFN {})".format(*theirs)
    return [
        "hint: the checkpoint's BERT does not match the config's text encoder (vocab {}, hidden {}, "
        "{} layers, FFN {}){}; pass the checkpoint's BERT config (a Hugging Face BertConfig JSON) as "
        "text_config / --text-config".format(*ours, theirs_text)
    ]
