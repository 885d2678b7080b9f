"""Key coverage of the official-checkpoint converter, from the official state-dict listings.

For GLIP-T, GLIP-T(A), GLIP-L (`shared/reference/*_state_dict_shapes.tsv`, the key lists of the
released checkpoints' architecture) and the parity fixture's tiny model, every official key must
map to one of our tensors with the same shape, every tensor of ours must be the target of exactly
one official key, and the reverse mapping must give the official name back. Only shapes are needed,
so the models are built with their parameters on the meta device (`build_shape_model`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import glipv2
from glipv2 import GLIPv2, GLIPv2Config
from glipv2.convert import (
    build_shape_model,
    convert_state_dict,
    load_official_checkpoint,
    official_to_ours,
    ours_to_official,
)
from glipv2.convert.synthetic import read_state_dict_shapes

# Official keys a glipv2 model intentionally has no tensor for (see convert/official.py `_IGNORED`).
IGNORED = [
    "module.language_backbone.body.model.embeddings.position_ids",
    "module.language_backbone.body.model.pooler.dense.weight",
    "module.language_backbone.body.model.pooler.dense.bias",
    "module.rpn.head.mlm_head.decoder.bias",
]
_IGNORED_RE = re.compile(
    r"module\.(language_backbone\.body\.model\.(embeddings\.position_ids|pooler\..+)"
    r"|rpn\.head\.mlm_head\.decoder\.bias)"
)


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The listing (parsed and checked by `read_state_dict_shapes`); official keys carry `module.`."""
    shapes = read_state_dict_shapes(path)
    assert all(key.startswith("module.") for key in shapes), (
        f"{path.name}: official keys carry the DDP prefix"
    )
    return shapes


@dataclass
class Listing:
    """One official key listing next to the model (shapes only) that should load it."""

    official: dict[str, tuple[int, ...]]  # official key -> shape
    config: GLIPv2Config
    ours: dict[str, tuple[int, ...]]  # our state dict
    buffers: dict[str, tuple[int, ...]]  # our buffers, saved or not


# listing -> (preset or "fixture", number of tensors; glip_reference.md section 10, FIXTURE.md)
LISTINGS = {
    "tiny": ("fixture", 313),
    "glip_t": ("glip_t", 745),
    "glip_t_a": ("glip_t_a", 541),
    "glip_l": ("glip_l", 1021),
}


@pytest.fixture(scope="module", params=list(LISTINGS))
def listing(request: pytest.FixtureRequest) -> Listing:
    """Each listing next to the shapes of the model that should load it."""
    preset, expected = LISTINGS[request.param]
    if preset == "fixture":
        tsv = request.getfixturevalue("fixture_dir") / "tiny_state_dict_shapes.tsv"
        config = request.getfixturevalue("fixture_config")
    else:
        tsv = request.getfixturevalue("reference_dir") / f"{preset}_state_dict_shapes.tsv"
        config = glipv2.get_config(preset)
    official = read_shapes(tsv)
    assert len(official) == expected
    model = build_shape_model(config)  # parameters on the meta device: shapes only
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    buffers = {k: tuple(v.shape) for k, v in model.named_buffers()}
    return Listing(official, config, ours, buffers)


def test_every_official_key_maps_to_a_tensor_of_the_same_shape(listing: Listing) -> None:
    official, config, ours, buffers = listing.official, listing.config, listing.ours, listing.buffers
    problems = []
    for key, shape in official.items():
        if _IGNORED_RE.fullmatch(key):
            continue
        name = official_to_ours(key, config)
        target = ours.get(name) if name is not None else None
        if target is None and name is not None:
            target = buffers.get(name)  # derived buffers: relative_position_index, cell anchors
        if target is None:
            problems.append(f"{key}: no tensor of ours ({name})")
        elif target != shape:
            problems.append(f"{key}: official {shape} vs ours {name} {target}")
    assert problems == []


def test_every_model_tensor_is_hit_exactly_once(listing: Listing) -> None:
    official, config, ours = listing.official, listing.config, listing.ours
    hits = Counter(official_to_ours(k, config) for k in official if not _IGNORED_RE.fullmatch(k))
    never = sorted(k for k in ours if hits[k] == 0)
    twice = sorted(k for k in ours if hits[k] > 1)
    assert never == [] and twice == []


def test_reverse_mapping_round_trips(listing: Listing) -> None:
    """ours_to_official(official_to_ours(k)) == k, for keys with and without `module.`."""
    official, config = listing.official, listing.config
    for key in official:
        if _IGNORED_RE.fullmatch(key):
            continue
        ours = official_to_ours(key, config)
        assert ours is not None, key
        assert ours_to_official(ours, config) == key
        assert official_to_ours(key.removeprefix("module."), config) == ours


def test_derived_buffers_are_the_official_buffer_keys(listing: Listing) -> None:
    """The official buffers (Swin relative position indices, cell anchors) are exactly the keys that
    map to our non-saved buffers: they are recomputed from the config, not loaded."""
    official, config, ours, buffers = listing.official, listing.config, listing.ours, listing.buffers
    to_buffers = sorted(
        k for k in official if not _IGNORED_RE.fullmatch(k) and official_to_ours(k, config) not in ours
    )
    assert all(official_to_ours(k, config) in buffers for k in to_buffers)
    assert to_buffers == sorted(
        k for k in official if k.endswith("relative_position_index") or ".anchor_generator.cell_anchors." in k
    )
    n_blocks = sum(config.swin_depths)
    assert len(to_buffers) == n_blocks + 5


# --- keys the official listings do not contain ---------------------------------------------------
@pytest.mark.parametrize("early_fusion", [True, False])
def test_glipv2_and_optional_keys_round_trip(
    early_fusion: bool, tiny_config: Callable[..., GLIPv2Config]
) -> None:
    """Every key of a model with the optional parts (prompt embedding, MLM head, L_inter
    projections) maps to an official name and back; the L_inter projections are GLIP's "shallow
    contrastive" modules of the ATSS loss evaluator."""
    config = tiny_config(
        early_fusion=early_fusion,
        fused_dot_product=early_fusion,
        prompt_embedding_rows=8,
        max_query_len=8,
        mlm_head=True,
        region_word_contrastive_dim=16,
    )
    model = build_shape_model(config)
    for key in model.state_dict():
        official = ours_to_official(key, config)
        assert official is not None and official.startswith("module."), (key, official)
        assert official_to_ours(official, config) == key, (key, official)
    assert ours_to_official("core.prompt_embedding", config) == "module.rpn.tunable_linear.weight"
    assert ours_to_official("heads.mlm.decoder.weight", config) == "module.rpn.head.mlm_head.decoder.weight"
    assert (
        ours_to_official("heads.inter.region.weight", config)
        == "module.rpn.loss_evaluator.shallow_contrastive_projection_image.weight"
    )
    assert (
        ours_to_official("heads.inter.token.bias", config)
        == "module.rpn.loss_evaluator.shallow_contrastive_projection_text.bias"
    )
    assert ours_to_official("heads.inter.log_scale", config) == "module.rpn.loss_evaluator.shallow_log_scale"


def test_official_key_without_counterpart_maps_to_none(fixture_config: GLIPv2Config) -> None:
    unused = "module.rpn.head.contrastive_align_projection_image.weight"  # GLIP's loss-only module
    assert official_to_ours(unused, fixture_config) is None
    assert official_to_ours("module.something.else", fixture_config) is None
    assert ours_to_official("not_a_module.weight", fixture_config) is None


def test_convert_reports_ignored_unmapped_and_mismatched(
    fixture_dir: Path, fixture_config: GLIPv2Config
) -> None:
    """On the fixture checkpoint plus extras: the documented extras (position_ids, pooler, the tied
    MLM decoder bias) are ignored, an unknown key is unmapped, a wrong shape and a derived buffer
    that differs from the config's value are mismatched and left out of the converted dict."""
    official = dict(load_official_checkpoint(fixture_dir / "glip_tiny_random.pth"))
    hidden = fixture_config.text_hidden_size
    official[IGNORED[0]] = torch.arange(512).unsqueeze(0)
    official[IGNORED[1]] = torch.zeros(hidden, hidden)
    official[IGNORED[2]] = torch.zeros(hidden)
    official[IGNORED[3]] = torch.zeros(fixture_config.text_encoder["vocab_size"])
    official["module.rpn.head.contrastive_align_projection_image.weight"] = torch.zeros(64, 64)
    official["module.rpn.head.bbox_pred.weight"] = torch.zeros(4, 32, 1, 1)  # ours is (4, 64, 1, 1)
    anchor = official["module.rpn.anchor_generator.cell_anchors.0"]
    official["module.rpn.anchor_generator.cell_anchors.0"] = anchor + 1

    model = GLIPv2(fixture_config)
    state, report = convert_state_dict(official, model, fixture_config)
    assert sorted(report.ignored) == sorted(IGNORED)
    assert report.unmapped == ["module.rpn.head.contrastive_align_projection_image.weight"]
    assert len(report.mismatched) == 2
    assert any(m.startswith("module.rpn.head.bbox_pred.weight (4, 32, 1, 1)") for m in report.mismatched)
    assert any(m.startswith("module.rpn.anchor_generator.cell_anchors.0") for m in report.mismatched)
    assert len(report.problems()) == 3
    assert "heads.grounding.bbox_pred.weight" not in state
    assert len(report.derived) == 8 + 4
    assert set(state) == set(model.state_dict()) - {"heads.grounding.bbox_pred.weight"}
