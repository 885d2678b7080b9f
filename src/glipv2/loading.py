"""`load_model(name_or_path)`: one entry point for presets, model folders, the shipped models, hub
ids and official GLIP `.pth` checkpoints (converted once by `glipv2.convert`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .modeling.glipv2 import CONFIG_NAME, TOKENIZER_DIR, WEIGHTS_NAME, GLIPv2
from .modeling.registry import build_model, list_models, random_weights_warning
from .processing.processor import PROCESSOR_NAME
from .utils.io import MissingPath, looks_like_path
from .utils.shipped import list_shipped_models, shipped_model_dir


def model_problem(name_or_path: str, err: BaseException) -> str:
    """One line for `--model NAME: <this>`: the error's first line without a leading "NAME: " (the
    option already names it), or the error's type when it has no message."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text.removeprefix(f"{name_or_path}: ") or type(err).__name__


def local_model_files(name_or_path: str) -> list[Path]:
    """The local files a model name reads (for output checks: no command may write over them): a
    `.pth` file itself; for a model folder — a shipped model's too — its config, weights, processor
    config and tokenizer files; nothing for a preset or a hub id."""
    path = shipped_model_dir(name_or_path) or Path(name_or_path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    files = [path / n for n in (CONFIG_NAME, WEIGHTS_NAME, PROCESSOR_NAME)]
    tokenizer = path / TOKENIZER_DIR
    if tokenizer.is_dir():
        files += [f for f in sorted(tokenizer.rglob("*")) if f.is_file()]
    return [f for f in files if f.exists()]


def load_model(
    name_or_path: str,
    *,
    warn: bool = True,
    filename: str | None = None,
    revision: str | None = None,
    arch: str | None = None,
    official_config: str | None = None,
    text_config: str | None = None,
    allow_pickle: bool = False,
    **config_overrides: Any,
) -> GLIPv2:
    """A model folder written by `save_pretrained`, a model shipped with the package by name
    (`glipv2_tiny_shapes`, see `glipv2.utils.shipped`), a Hugging Face hub id, a preset name, or an
    official GLIP checkpoint (a local `.pth`, or a hub id with `filename="<name>.pth"`; `arch`,
    `official_config`, `text_config` and `allow_pickle` as `glipv2.convert.from_official`).

    A preset has no trained weights: it is built with random weights (the `glipv2_tiny` text
    encoder excepted), and — unless `warn=False` — a loud warning says so on stderr."""
    official = {"arch": arch, "official_config": official_config, "text_config": text_config}
    if (filename or str(name_or_path)).endswith(".pth"):
        from .convert.hub import from_official

        return from_official(
            str(name_or_path), filename, revision, allow_pickle=allow_pickle, **official, **config_overrides
        )
    if given := sorted(k for k, v in {**official, "filename": filename}.items() if v is not None):
        raise ValueError(
            f"{', '.join(given)}: only for official GLIP .pth checkpoints "
            f"(filename='<name>.pth' or a local .pth path), not {name_or_path!r}"
        )
    if Path(name_or_path).is_dir():
        return GLIPv2.from_pretrained(name_or_path, **config_overrides)
    if (shipped := shipped_model_dir(str(name_or_path))) is not None:
        return GLIPv2.from_pretrained(shipped, **config_overrides)
    if looks_like_path(str(name_or_path)) and not Path(name_or_path).exists():
        # `./my_modle`, `runs/x/model`: a mistyped path, not a hub id to look up
        raise MissingPath(f"{name_or_path}: no such model folder")
    if name_or_path in list_models():
        if warn:
            print(random_weights_warning(name_or_path), file=sys.stderr)
        return build_model(name_or_path, **config_overrides)
    if name_or_path.count("/") == 1 and not Path(name_or_path).exists():
        return GLIPv2.from_pretrained(name_or_path, revision=revision, **config_overrides)
    raise ValueError(
        f"{name_or_path!r} is not a model folder, a hub id 'owner/name', a .pth checkpoint, a shipped "
        f"model ({', '.join(list_shipped_models()) or 'none installed'}) or a preset ({', '.join(list_models())})"
    )


def load_model_option(name_or_path: str, device: str | None = None) -> GLIPv2:
    """What a command's `--model NAME [--device D]` gives: the model (on `device`), or a `ValueError`
    of one line, "--model NAME: <the problem>" or "--device D: <the problem>", for the command to print."""
    import torch

    try:
        model = load_model(name_or_path)
    # a corrupt weights file raises the safetensors library's own error type
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"--model {name_or_path}: {model_problem(name_or_path, err)}") from None
    if device:
        try:
            model = model.to(torch.device(device))
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"--device {device}: {err}") from None
    return model
