"""Official GLIP checkpoints from the Hugging Face hub (or a local `.pth`): converted once, cached.

`from_official("GLIPModel/GLIP", filename="glip_tiny_model_o365_goldg.pth")` (or `glipv2.load_model`) downloads
the file with `huggingface_hub.hf_hub_download` (so the hub's own cache, offline mode and tokens
apply), converts it into `cache_root()/<owner>--<repo>--<file stem>--<commit>--<config
digest>` (`$GLIPV2_CACHE/converted`, default the hub's assets cache) and loads that folder; later calls find the folder and
skip both steps. The config digest keeps conversions of one file under different architectures
apart.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import Any

from ..modeling.config import GLIPv2Config
from ..modeling.glipv2 import CONFIG_NAME, WEIGHTS_NAME, GLIPv2
from .checkpoint import convert_checkpoint
from .official_config import resolve_config

CACHE_ENV = "GLIPV2_CACHE"

# Released checkpoints (glip_reference.md section 12) -> the preset describing their network.
OFFICIAL_CHECKPOINTS: dict[str, str] = {
    "glip_a_tiny_o365.pth": "glip_t_a",
    "glip_tiny_model_o365.pth": "glip_t",
    "glip_tiny_model_o365_goldg.pth": "glip_t",
    "glip_tiny_model_o365_goldg_lvisbest.pth": "glip_t",
    "glip_tiny_model_o365_goldg_cc_sbu.pth": "glip_t",
    "glip_tiny_model_o365_goldg_cc_sbu_lvisbest.pth": "glip_t",
    "glip_large_model.pth": "glip_l",
    "glip_large_model_lvisbest.pth": "glip_l",
}


def cache_root() -> Path:
    """Folder of converted checkpoints: `$GLIPV2_CACHE/converted`, by default the Hugging Face hub's
    assets cache for glipv2 (`huggingface_hub.cached_assets_path`: `$HF_HOME/assets/glipv2/official/
    converted`, which honours HF_HOME / HF_ASSETS_CACHE and is listed and cleaned with the hub's cache)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root) / "converted"
    from huggingface_hub import cached_assets_path

    return cached_assets_path(library_name="glipv2", namespace="official", subfolder="converted")


def official_arch(filename: str) -> str | None:
    """The preset of a released checkpoint file name (any folder part ignored), or None."""
    return OFFICIAL_CHECKPOINTS.get(PurePosixPath(filename.replace("\\", "/")).name)


def official_checkpoint_config(
    filename: str,
    arch: str | None = None,
    official_config: str | os.PathLike[str] | None = None,
    text_config: str | os.PathLike[str] | dict[str, Any] | None = None,
) -> GLIPv2Config:
    """The config to convert `filename` with: `arch` (a preset) or `official_config` (a GLIP
    YAML) when given, else the table of released file names."""
    if arch is None and official_config is None:
        arch = official_arch(filename)
        if arch is None:
            known = ", ".join(sorted(OFFICIAL_CHECKPOINTS))
            raise ValueError(
                f"{filename}: not a released GLIP checkpoint name ({known}); say what it "
                "holds with arch= (glip_t, glip_t_a, glip_l) or official_config= "
                "(its GLIP YAML)"
            )
    return resolve_config(arch, official_config, text_config)


def converted_model_dir(
    name_or_path: str,
    filename: str | None = None,
    revision: str | None = None,
    *,
    arch: str | None = None,
    official_config: str | os.PathLike[str] | None = None,
    text_config: str | os.PathLike[str] | dict[str, Any] | None = None,
    allow_partial: bool = False,
    allow_pickle: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """The glipv2 model folder of an official checkpoint, converting it on first use.

    name_or_path: a hub repo id ("GLIPModel/GLIP") with `filename` the `.pth` inside it (and an
    optional `revision`), or a local `.pth` path with `filename` None. The config comes from
    `official_checkpoint_config`. cache_dir: default `cache_root()`."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    if filename is None:
        src = Path(name_or_path)
        if not src.is_file():
            raise ValueError(f"{src}: no such file")
        config = official_checkpoint_config(src.name, arch, official_config, text_config)
        stat = src.stat()
        identity = f"{src.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        fingerprint = hashlib.sha256(identity.encode()).hexdigest()
        key = f"local--{src.stem}--{fingerprint[:12]}"
    else:
        if not filename.endswith(".pth"):
            raise ValueError(f"{filename}: official GLIP checkpoints are .pth files")
        config = official_checkpoint_config(filename, arch, official_config, text_config)
        src, commit = _download(name_or_path, filename, revision)
        key = f"{name_or_path.replace('/', '--')}--{PurePosixPath(filename).stem}--{commit}"
    target = root / f"{key}--{config_digest(config)}"
    if (target / CONFIG_NAME).is_file() and (target / WEIGHTS_NAME).is_file():
        return target
    # an incomplete folder at `target` can only be a leftover edited by hand: replace it
    convert_checkpoint(
        src, target, config, allow_partial=allow_partial, allow_pickle=allow_pickle, overwrite=True
    )
    return target


def config_digest(config: GLIPv2Config) -> str:
    """Short stable digest of a config (cache key part)."""
    return hashlib.sha256(config.to_json().encode()).hexdigest()[:10]


def _download(repo_id: str, filename: str, revision: str | None) -> tuple[Path, str]:
    """(local path, commit hash) of a hub file, through the hub's cache."""
    if repo_id.count("/") != 1:
        raise ValueError(f"{repo_id!r} is not a hub id 'owner/name'")
    from huggingface_hub import hf_hub_download

    try:
        local = Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as err:  # offline without a cached copy, unknown repo or file, no access
        raise ValueError(
            f"could not fetch {filename!r} from {repo_id!r} on the Hugging Face hub: {err}"
        ) from err
    snapshot = local
    for _ in PurePosixPath(filename).parts:
        snapshot = snapshot.parent
    # the hub cache stores files under snapshots/<commit>/; anything else keys by the revision name
    commit = snapshot.name if snapshot.parent.name == "snapshots" else (revision or "main")
    return local, commit


def from_official(
    name_or_path: str,
    filename: str | None = None,
    revision: str | None = None,
    *,
    arch: str | None = None,
    official_config: str | os.PathLike[str] | None = None,
    text_config: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    map_location: str = "cpu",
    **config_overrides: Any,
) -> GLIPv2:
    """An official GLIP checkpoint as a `GLIPv2`: a local `.pth` path, or a hub repo id with
    `filename` the `.pth` inside it (e.g. `from_official("GLIPModel/GLIP",
    filename="glip_tiny_model_o365_goldg.pth")`). Converted once into `cache_root()` (see
    `converted_model_dir`); its architecture comes from the released file name, or from `arch`
    (a preset: glip_t, glip_t_a, glip_l) or `official_config` (the GLIP YAML), with `text_config`
    (a BertConfig JSON) when its BERT is not bert-base-uncased. `allow_pickle` lets the converter
    unpickle a file that `torch.load(weights_only=True)` refuses."""
    directory = converted_model_dir(
        name_or_path,
        filename,
        revision,
        arch=arch,
        official_config=official_config,
        text_config=text_config,
        allow_pickle=allow_pickle,
    )
    return GLIPv2.from_pretrained(directory, map_location=map_location, **config_overrides)
