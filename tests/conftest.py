"""Shared fixtures of the test suite.

* The GLIP parity fixture (`/work/shared/fixtures/glip_parity_tiny`, found next to the repository
  as `<repo>/../shared/...`): its config, the converted model and the recorded official outputs.
* `tiny_config`: a factory for very small random configs, so model-level tests run in
  milliseconds on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from PIL import Image

import glipv2
from glipv2 import GLIPv2, GLIPv2Config, GLIPv2Processor, Predictor
from glipv2.convert import ConversionReport, convert_state_dict, load_official_checkpoint
from glipv2.modeling.text_encoder import BERT_CONFIG_KEYS
from glipv2.processing.postprocess import PostProcessor
from glipv2.processing.text import load_tokenizer

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
FIXTURE_DIR = SHARED_DIR / "fixtures" / "glip_parity_tiny"
REFERENCE_DIR = SHARED_DIR / "reference"

# Hypothesis profiles of the fuzz tests (tests/test_fuzz.py; other property tests keep their own
# settings): "ci", bounded and reproducible, runs in `make test`; "long" is the longer sweep, chosen
# with GLIPV2_FUZZ=long (GLIPV2_FUZZ_EXAMPLES=N sets its size).
_FUZZ_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci", max_examples=50, deadline=None, derandomize=True, suppress_health_check=_FUZZ_QUIET
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("GLIPV2_FUZZ_EXAMPLES", "2000")),
    deadline=None,
    suppress_health_check=_FUZZ_QUIET,
)


# A BERT small enough that the text side costs nothing (vocab kept: the real tokenizer is used).
TINY_BERT: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


def build_fixture_config(fixture_dir: Path) -> GLIPv2Config:
    """The GLIPv2Config describing the fixture's tiny official model (see FIXTURE.md, "Config"):
    GLIP-T with a 32-wide Swin, 64-channel FPN and head, 2 head blocks, and the fixture's BERT."""
    bert = json.loads((fixture_dir / "tiny_bert_config.json").read_text())
    return glipv2.get_config(
        "glip_t",
        swin_embed_dim=32,
        swin_depths=(2, 2, 2, 2),
        swin_num_heads=(1, 2, 4, 8),
        fpn_channels=64,
        head_channels=64,
        num_head_blocks=2,
        text_encoder={k: bert[k] for k in BERT_CONFIG_KEYS},
    )


# the glip_t preset's overrides that make the tiny test config (also usable as `build_model("glip_t",
# **TINY_OVERRIDES)` or `from_pretrained("glip_t", **TINY_OVERRIDES)`)
TINY_OVERRIDES: dict[str, Any] = dict(
    swin_embed_dim=16,
    swin_depths=(2, 2, 2, 2),
    swin_num_heads=(1, 1, 2, 2),
    fpn_channels=32,
    head_channels=32,
    num_head_blocks=2,
    fusion_embed_dim=64,
    fusion_num_heads=4,
    text_encoder=dict(TINY_BERT),
)


def make_tiny_config(**overrides: Any) -> GLIPv2Config:
    """A very small random GLIP-T-shaped config (~1.8 M parameters, of which 1 M is the word
    embedding): Swin 16 wide with 2 blocks per stage (so shifted windows are exercised), 32-channel
    FPN/head, 2 head blocks, 4-head 64-dim fusion and a 32-wide, 2-layer BERT."""
    return glipv2.get_config("glip_t", **{**TINY_OVERRIDES, **overrides})


def skip_or_fail(reason: str) -> None:
    """Skip a test whose input is missing — except under CI (`CI` set), where ../shared is always
    laid beside the clone, so a missing file is a failure, not a reason to test less."""
    if os.environ.get("CI"):
        pytest.fail(f"under CI: {reason}")
    pytest.skip(reason)


# --- parity fixture ---------------------------------------------------------------------------
@dataclass
class Conversion:
    """The converted fixture checkpoint: our state dict and the converter's report."""

    state_dict: dict[str, torch.Tensor]
    report: ConversionReport
    official_keys: list[str]


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """Folder of the official-code parity fixture; tests needing it are skipped when absent."""
    if not (FIXTURE_DIR / "glip_tiny_random.pth").is_file():
        skip_or_fail(
            f"GLIP parity fixture not found at {FIXTURE_DIR} (expected next to the repository, "
            "in ../shared/fixtures/glip_parity_tiny)"
        )
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Folder with the official state-dict shape listings (`*_state_dict_shapes.tsv`)."""
    if not REFERENCE_DIR.is_dir():
        skip_or_fail(f"reference shape listings not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def fixture_config(fixture_dir: Path) -> GLIPv2Config:
    return build_fixture_config(fixture_dir)


@pytest.fixture(scope="session")
def fixture_conversion(fixture_dir: Path, fixture_config: GLIPv2Config) -> Conversion:
    official = load_official_checkpoint(fixture_dir / "glip_tiny_random.pth")
    state, report = convert_state_dict(official, GLIPv2(fixture_config), fixture_config)
    return Conversion(state, report, list(official))


@pytest.fixture(scope="session")
def fixture_model(fixture_config: GLIPv2Config, fixture_conversion: Conversion) -> GLIPv2:
    """Our model with the fixture's official weights, in eval mode."""
    model = GLIPv2(fixture_config)
    model.load_state_dict(fixture_conversion.state_dict, strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def fixture_outputs(fixture_dir: Path) -> dict[str, Any]:
    """The official model's recorded inputs and intermediates (FIXTURE.md, "outputs.pt keys")."""
    return torch.load(fixture_dir / "outputs.pt", weights_only=True)


# --- tiny random models -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., GLIPv2Config]:
    """Factory: `tiny_config(**overrides) -> GLIPv2Config` (see `make_tiny_config`)."""
    return make_tiny_config


@pytest.fixture(scope="session")
def bert_tokenizer() -> Any:
    """The bert-base-uncased tokenizer (served offline from the MiniLM package's identical vocab)."""
    return load_tokenizer("bert-base-uncased")


# --- inference ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fixture_predictor(fixture_model: GLIPv2) -> Predictor:
    """The fixture model with the fixture's pre-processing (no resize)."""
    processor = GLIPv2Processor.from_config(fixture_model.config, resize=False)
    return Predictor(fixture_model, processor)


@pytest.fixture(scope="session")
def fixture_model_dir(fixture_model: GLIPv2, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture model written by `save_pretrained` (what `glipv2 predict --model` reads)."""
    return fixture_model.save_pretrained(tmp_path_factory.mktemp("fixture_model"))


@pytest.fixture(scope="session")
def tiny_model() -> GLIPv2:
    torch.manual_seed(0)
    return GLIPv2(make_tiny_config(pad_to_max_query_len=False)).eval()


@pytest.fixture
def make_predictor(tiny_model: GLIPv2) -> Callable[..., Predictor]:
    """Factory of predictors on small images (shorter side 64) whose post-processing keeps every
    candidate, so that random weights still give detections to compare."""

    def make(model: GLIPv2 | None = None, **kwargs: Any) -> Predictor:
        model = model or tiny_model
        processor = GLIPv2Processor.from_config(model.config, min_size=64, max_size=96)
        return Predictor(model, processor, postprocessor=PostProcessor(inference_threshold=0.0), **kwargs)

    return make


@pytest.fixture(scope="session")
def random_image() -> Callable[..., Image.Image]:
    """Factory: `random_image(seed, (width, height))` -> a noise RGB image."""

    def make(seed: int, size: tuple[int, int] = (80, 60)) -> Image.Image:
        pixels = np.random.RandomState(seed).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        return Image.fromarray(pixels)

    return make


@pytest.fixture(scope="session")
def understanding_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model with a VQA head (answers yes/no/2/red) and a caption head, saved with its
    processor (small test sizes), as `glipv2 predict / eval --model` read it."""
    torch.manual_seed(0)
    config = make_tiny_config(
        pad_to_max_query_len=False,
        vqa_answers=("yes", "no", "2", "red"),
        caption_head=True,
        test_min_size=64,
        test_max_size=96,
    )
    model = GLIPv2(config).eval()
    with torch.no_grad():  # a head that prefers a few tokens, so that captions are not all one token
        model.heads["caption"].bias.normal_(0, 2.0)
    folder = tmp_path_factory.mktemp("understanding_model")
    model.save_pretrained(folder)
    GLIPv2Processor.from_config(config).save_pretrained(folder)
    return folder
