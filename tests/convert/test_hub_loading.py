"""`glipv2.load_model(repo, filename="....pth")`: download via the hub cache, convert once, reuse.

Fully offline: a Hugging Face cache folder is laid out by hand (refs/main -> commit,
snapshots/<commit>/<file>), huggingface_hub is put in offline mode and sockets refuse to connect.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import constants as hub_constants

import glipv2
from glipv2 import GLIPv2
from glipv2.convert import config_from_official_yaml, convert_checkpoint, hub, official_checkpoint_config

REPO = "GLIPModel/GLIP"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILENAME = "glip_tiny_random.pth"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def hub_cache(tmp_path: Path, fixture_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline hub cache holding GLIPModel/GLIP@main = COMMIT with the fixture checkpoint, and an
    empty glipv2 conversion cache."""
    cache = tmp_path / "hf"
    repo = cache / "models--GLIPModel--GLIP"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    shutil.copyfile(fixture_dir / "glip_tiny_random.pth", repo / "snapshots" / COMMIT / FILENAME)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # read at call time
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "glipv2"))
    return cache


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Destinations of every `convert_checkpoint` the hub module makes."""
    calls: list[Path] = []
    real: Callable[..., Any] = hub.convert_checkpoint

    def counting(src: Path, out: Path, *args: Any, **kwargs: Any) -> Any:
        calls.append(Path(out))
        return real(src, out, *args, **kwargs)

    monkeypatch.setattr(hub, "convert_checkpoint", counting)
    return calls


def official_kwargs(fixture_dir: Path) -> dict[str, Any]:
    return {
        "official_config": fixture_dir / "config_full.yaml",
        "text_config": fixture_dir / "tiny_bert_config.json",
    }


def assert_same_weights(a: GLIPv2, b: GLIPv2) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_hub_checkpoint_is_converted_once_and_equals_a_direct_conversion(
    hub_cache: Path, fixture_dir: Path, tmp_path: Path, conversions: list[Path]
) -> None:
    model = glipv2.load_model(REPO, filename=FILENAME, **official_kwargs(fixture_dir))
    assert len(conversions) == 1
    folder = conversions[0]
    assert folder.parent == tmp_path / "glipv2" / "converted"
    assert folder.name.startswith(f"GLIPModel--GLIP--glip_tiny_random--{COMMIT}--")
    assert model.name_or_path == str(folder) and not model.training
    assert (folder / "tokenizer").is_dir()  # the processor is saved beside the model

    config = config_from_official_yaml(
        fixture_dir / "config_full.yaml", text_config=fixture_dir / "tiny_bert_config.json"
    )
    convert_checkpoint(fixture_dir / "glip_tiny_random.pth", tmp_path / "direct", config)
    assert_same_weights(model, GLIPv2.from_pretrained(tmp_path / "direct"))
    assert model.config == config

    again = glipv2.load_model(REPO, filename=FILENAME, **official_kwargs(fixture_dir))
    assert len(conversions) == 1  # the converted folder was reused
    assert_same_weights(again, model)
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_another_architecture_gets_its_own_cache_entry(
    hub_cache: Path, fixture_dir: Path, conversions: list[Path]
) -> None:
    """The same file under another config is a different conversion (here: one that fails)."""
    glipv2.load_model(REPO, filename=FILENAME, **official_kwargs(fixture_dir))
    with pytest.raises(ValueError, match="cannot be converted"):
        glipv2.load_model(REPO, filename=FILENAME, arch="glip_t")
    assert len(conversions) == 2 and conversions[0] != conversions[1]


def test_local_pth_path_is_converted_into_the_cache(
    hub_cache: Path, fixture_dir: Path, tmp_path: Path, conversions: list[Path]
) -> None:
    src = tmp_path / "my_glip.pth"
    shutil.copyfile(fixture_dir / "glip_tiny_random.pth", src)
    model = glipv2.load_model(str(src), **official_kwargs(fixture_dir))
    glipv2.load_model(str(src), **official_kwargs(fixture_dir))
    assert len(conversions) == 1 and conversions[0].name.startswith("local--my_glip--")
    assert model.config.num_head_blocks == 2
    with pytest.raises(ValueError, match=r"official GLIP checkpoint; load it with glipv2\.load_model"):
        GLIPv2.from_pretrained(src)  # a model folder loader only


def test_file_not_in_the_offline_cache(hub_cache: Path, conversions: list[Path]) -> None:
    with pytest.raises(ValueError, match="could not fetch 'glip_large_model.pth' from 'GLIPModel/GLIP'"):
        glipv2.load_model(REPO, filename="glip_large_model.pth")
    assert conversions == []


def test_unknown_file_needs_an_architecture(hub_cache: Path, conversions: list[Path]) -> None:
    """Refused from the name alone, before any download."""
    with pytest.raises(ValueError, match="mystery.pth: not a released GLIP checkpoint name.*arch="):
        glipv2.load_model(REPO, filename="mystery.pth")
    with pytest.raises(ValueError, match="official GLIP .pth"):
        glipv2.load_model(REPO, filename="model.safetensors")
    with pytest.raises(ValueError, match="arch: only for official GLIP .pth checkpoints"):
        glipv2.load_model(str(hub_cache), arch="glip_t")
    assert conversions == []


@pytest.mark.parametrize(
    ("filename", "preset"),
    [
        ("glip_a_tiny_o365.pth", "glip_t_a"),
        ("glip_tiny_model_o365.pth", "glip_t"),
        ("glip_tiny_model_o365_goldg.pth", "glip_t"),
        ("glip_tiny_model_o365_goldg_cc_sbu.pth", "glip_t"),
        ("glip_tiny_model_o365_goldg_cc_sbu_lvisbest.pth", "glip_t"),
        ("glip_large_model.pth", "glip_l"),
        ("some/folder/glip_large_model_lvisbest.pth", "glip_l"),
    ],
)
def test_released_file_names_give_their_preset(filename: str, preset: str) -> None:
    assert official_checkpoint_config(filename) == glipv2.get_config(preset)
    assert official_checkpoint_config(filename, arch="glip_t_a") == glipv2.get_config("glip_t_a")
