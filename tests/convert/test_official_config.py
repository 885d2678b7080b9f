"""`GLIPv2Config` from official GLIP yacs YAMLs (`glipv2.convert.official_config`)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import build_fixture_config

import glipv2
from glipv2 import GLIPv2Config
from glipv2.convert import ConversionError, config_from_official_yaml, load_text_config, resolve_config
from glipv2.modeling.config import BERT_BASE_UNCASED_CONFIG

# The keys of configs/pretrain/glip_Swin_T_O365_GoldG.yaml that shape the network, written the way
# the official files are (tuples as Python-literal strings); Swin and language widths come from
# the official defaults.
GLIP_T_YAML = """
MODEL:
  META_ARCHITECTURE: "GeneralizedVLRCNN"
  RPN_ONLY: True
  RPN_ARCHITECTURE: "VLDYHEAD"
  BACKBONE:
    CONV_BODY: "SWINT-FPN-RETINANET"
    OUT_CHANNELS: 256
  LANGUAGE_BACKBONE:
    MODEL_TYPE: "bert-base-uncased"
    MASK_SPECIAL: False
  RPN:
    USE_FPN: True
    ANCHOR_SIZES: (64, 128, 256, 512, 1024)
    ANCHOR_STRIDE: (8, 16, 32, 64, 128)
    ASPECT_RATIOS: (1.0,)
    SCALES_PER_OCTAVE: 1
  DYHEAD:
    CHANNELS: 256
    NUM_CONVS: 6
    USE_GN: True
    USE_DYRELU: True
    USE_DFCONV: True
    USE_DYFUSE: True
    LOG_SCALE: 0.0
    USE_CHECKPOINT: True
    FUSE_CONFIG:
      EARLY_FUSE_ON: True
      TYPE: "MHA-B"
      USE_FUSED_FEATURES_DOT_PRODUCT: True
      USE_LAYER_SCALE: True
  GROUP_NORM:
    NUM_GROUPS: 16
INPUT:
  PIXEL_MEAN: [ 103.530, 116.280, 123.675 ]
  PIXEL_STD: [ 57.375, 57.120, 58.395 ]
  MIN_SIZE_TEST: 800
  MAX_SIZE_TEST: 1333
DATALOADER:
  SIZE_DIVISIBILITY: 32
"""

# glip_reference.md section 2: what glip_A_Swin_T_O365.yaml and glip_Swin_L.yaml change
VARIANTS: dict[str, dict[str, Any]] = {
    "glip_t": {},
    "glip_t_a": {
        "MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON": False,
        "MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT": False,
    },
    "glip_l": {
        "MODEL.SWINT.EMBED_DIM": 192,
        "MODEL.SWINT.DEPTHS": "(2, 2, 18, 2)",
        "MODEL.SWINT.NUM_HEADS": "(6, 12, 24, 48)",
        "MODEL.SWINT.WINDOW_SIZE": 12,
        "MODEL.SWINT.OUT_CHANNELS": "(192, 384, 768, 1536)",
        "MODEL.SWINT.DROP_PATH_RATE": 0.4,
        "MODEL.DYHEAD.NUM_CONVS": 8,
    },
}


def set_key(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def write_yaml(path: Path, data: dict[str, Any], **changes: Any) -> Path:
    """Write `data` with dotted-key `changes` applied."""
    data = copy.deepcopy(data)
    for key, value in changes.items():
        set_key(data, key, value)
    path.write_text(yaml.safe_dump(data))
    return path


def fields_differing(a: GLIPv2Config, b: GLIPv2Config) -> dict[str, tuple[Any, Any]]:
    return {
        f.name: (getattr(a, f.name), getattr(b, f.name))
        for f in dataclasses.fields(GLIPv2Config)
        if getattr(a, f.name) != getattr(b, f.name)
    }


@pytest.fixture(scope="module")
def full_dump(fixture_dir: Path) -> dict[str, Any]:
    """The fixture's `cfg.dump()` as nested dicts."""
    return yaml.safe_load((fixture_dir / "config_full.yaml").read_text())


# --- the fixture's YAML -----------------------------------------------------------------------------
def test_fixture_yaml_with_text_config_is_the_fixture_config(fixture_dir: Path) -> None:
    """The full dump plus the tiny BERT's config describe exactly the fixture's model (the config
    the parity tests use, built by hand from FIXTURE.md); only the name differs."""
    config = config_from_official_yaml(
        fixture_dir / "config_full.yaml", text_config=fixture_dir / "tiny_bert_config.json"
    )
    assert fields_differing(config, build_fixture_config(fixture_dir)) == {"name": ("config_full", "glip_t")}
    assert config.text_encoder["hidden_size"] == 64 and config.legacy_num_classes == 80


def test_tuples_written_as_strings_are_accepted(
    tmp_path: Path, fixture_dir: Path, full_dump: dict[str, Any]
) -> None:
    """yacs override files write tuples as `"(2, 2, 2, 2)"` and booleans as `False`; same config."""
    path = write_yaml(
        tmp_path / "strings.yaml",
        full_dump,
        **{
            "MODEL.SWINT.DEPTHS": "(2, 2, 2, 2)",
            "MODEL.SWINT.NUM_HEADS": "(1, 2, 4, 8)",
            "MODEL.SWINT.OUT_CHANNELS": "(32, 64, 128, 256)",
            "MODEL.RPN.ASPECT_RATIOS": "(1.0,)",
            "MODEL.DYHEAD.USE_CHECKPOINT": "False",
            "INPUT.PIXEL_STD": "[57.375, 57.12, 58.395]",
        },
    )
    text = fixture_dir / "tiny_bert_config.json"
    assert config_from_official_yaml(path, text_config=text, name="x") == config_from_official_yaml(
        fixture_dir / "config_full.yaml", text_config=text, name="x"
    )


def test_bert_size_is_not_guessed(fixture_dir: Path) -> None:
    """The fixture's YAML names bert-base-uncased but LANG_DIM 64: without the text config the
    derivation fails and says to pass it."""
    with pytest.raises(ConversionError, match="LANG_DIM = 64 .* hidden size 768.*text_config") as info:
        config_from_official_yaml(fixture_dir / "config_full.yaml")
    assert len(info.value.problems) == 1


# --- the released architectures ------------------------------------------------------------------------
@pytest.mark.parametrize("preset", list(VARIANTS))
def test_official_pretrain_yaml_gives_the_preset(preset: str, tmp_path: Path) -> None:
    """The network keys of the official pretrain YAMLs (official defaults for the rest) give the
    registered presets; DYHEAD.USE_CHECKPOINT (gradient checkpointing, training only) is carried over."""
    path = write_yaml(tmp_path / f"{preset}.yaml", yaml.safe_load(GLIP_T_YAML), **VARIANTS[preset])
    config = config_from_official_yaml(path, name=preset)
    expected = glipv2.get_config(preset)
    assert fields_differing(config, expected) == {"gradient_checkpointing": (True, False)}


def test_glip_t_text_encoder_is_bert_base(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(GLIP_T_YAML)
    config = config_from_official_yaml(path)
    assert config.text_encoder == BERT_BASE_UNCASED_CONFIG
    assert config.name == "t" and config.tokenizer == "bert-base-uncased" and config.text_weights is None


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER": True}, {"prompt_embedding_rows": 1000}),
        ({"MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS": True}, {"mlm_head": True}),
        (
            {
                "MODEL.DYHEAD.FUSE_CONFIG.USE_SHALLOW_CONTRASTIVE_LOSS": True,
                "MODEL.DYHEAD.FUSE_CONFIG.SHALLOW_CONTRASTIVE_HIDDEN_DIM": 32,
                "MODEL.DYHEAD.SHALLOW_LOG_SCALE": -2.3,
            },
            {"region_word_contrastive_dim": 32, "region_word_contrastive_log_scale_init": -2.3},
        ),
        (
            {
                "MODEL.DYHEAD.NUM_CLASSES": 1204,
                "MODEL.DYHEAD.PRIOR_PROB": 0.02,
                "MODEL.DYHEAD.LOG_SCALE": 1.5,
            },
            {"legacy_num_classes": 1203, "prior_prob": 0.02, "log_scale_init": 1.5},
        ),
        ({"MODEL.FPN.DROP_BLOCK": False}, {"fpn_drop_block_prob": 0.0}),
        (
            {"MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN": 128, "MODEL.LANGUAGE_BACKBONE.PAD_MAX": False},
            {"max_query_len": 128, "pad_to_max_query_len": False},
        ),
        (
            {
                "MODEL.DYHEAD.USE_DFCONV": False,
                "MODEL.DYHEAD.USE_DYRELU": False,
                "MODEL.DYHEAD.USE_DYFUSE": False,
                "MODEL.GROUP_NORM.NUM_GROUPS": 32,
            },
            {
                "use_deformable_conv": False,
                "use_dyrelu": False,
                "use_scale_attention": False,
                "group_norm_groups": 32,
            },
        ),
        (
            {
                "MODEL.ATSS.INFERENCE_TH": 0.1,
                "MODEL.ATSS.NMS_TH": 0.5,
                "MODEL.ATSS.PRE_NMS_TOP_N": 500,
                "MODEL.ATSS.DETECTIONS_PER_IMG": 300,
                "INPUT.MIN_SIZE_TEST": 600,
                "INPUT.MAX_SIZE_TEST": 1000,
            },
            {
                "inference_threshold": 0.1,
                "nms_threshold": 0.5,
                "pre_nms_top_n": 500,
                "detections_per_image": 300,
                "test_min_size": 600,
                "test_max_size": 1000,
            },
        ),
    ],
)
def test_yaml_keys_reach_their_fields(
    changes: dict[str, Any], fields: dict[str, Any], tmp_path: Path
) -> None:
    base = config_from_official_yaml(
        write_yaml(tmp_path / "base.yaml", yaml.safe_load(GLIP_T_YAML)), name="x"
    )
    changed = config_from_official_yaml(
        write_yaml(tmp_path / "x.yaml", yaml.safe_load(GLIP_T_YAML), **changes), name="x"
    )
    assert {k: v[0] for k, v in fields_differing(changed, base).items()} == fields


# --- refusals -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "MODEL.BACKBONE.CONV_BODY",
            "R-50-FPN-RETINANET",
            "CONV_BODY = 'R-50-FPN-RETINANET' is not supported",
        ),
        (
            "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE",
            "roberta-base",
            "MODEL_TYPE = 'roberta-base' is not supported: .*BERT",
        ),
        (
            "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE",
            "bert-large-uncased",
            "MODEL_TYPE = 'bert-large-uncased': .*text_config",
        ),
        ("MODEL.DYHEAD.FUSE_CONFIG.TYPE", "MHA-S", "TYPE = 'MHA-S' is not supported: .*MHA-B"),
        ("MODEL.RPN_ONLY", False, "RPN_ONLY = False is not supported: ROI heads"),
        ("MODEL.MASK_ON", True, "MASK_ON = True is not supported"),
        ("MODEL.SWINT.VERSION", "vl", "VERSION = 'vl' is not supported"),
        ("MODEL.DYHEAD.COSINE_SCALE", 20.0, "COSINE_SCALE = 20.0 is not supported"),
        ("MODEL.RPN.ASPECT_RATIOS", "(0.5, 1.0, 2.0)", r"ASPECT_RATIOS = \(0.5, 1.0, 2.0\) is not supported"),
        ("MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE", 128, "JOINT_EMB_SIZE = 128 is not supported"),
        (
            "MODEL.DYHEAD.FUSE_CONFIG.USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS",
            True,
            "USE_BACKBONE_SHALLOW.* not supported",
        ),
        (
            "MODEL.SWINT.OUT_CHANNELS",
            "(96, 192, 384, 999)",
            "OUT_CHANNELS = .* widths \\(96, 192, 384, 768\\)",
        ),
        ("MODEL.SWINT.DEPTHS", "two", "DEPTHS = 'two': expected ints"),
        ("MODEL.DYHEAD.NUM_CONVS", "6.5", "NUM_CONVS = '6.5': expected int"),
        (
            "MODEL.LANGUAGE_BACKBONE.LANG_DIM",
            512,
            "LANG_DIM = 512 differs from bert-base-uncased's hidden size 768",
        ),
        ("MODEL.DYHEAD.CHANNELS", 250, "head_channels must be divisible by group_norm_groups"),
    ],
)
def test_unrepresentable_values_are_refused(key: str, value: Any, message: str, tmp_path: Path) -> None:
    """A ValueError naming the file, the key and the value."""
    path = write_yaml(tmp_path / "bad.yaml", yaml.safe_load(GLIP_T_YAML), **{key: value})
    if key == "MODEL.DYHEAD.CHANNELS":  # keep the fusion widths consistent, so GroupNorm is the problem
        path = write_yaml(
            path,
            yaml.safe_load(path.read_text()),
            **{"MODEL.BACKBONE.OUT_CHANNELS": value, "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE": value},
        )
    with pytest.raises(ValueError, match=message) as info:
        config_from_official_yaml(path)
    assert str(path) in str(info.value)


def test_partial_yaml_lists_every_missing_key(fixture_dir: Path) -> None:
    """overrides.yaml only holds the fixture's changes: one error lists all required keys."""
    with pytest.raises(ConversionError) as info:
        config_from_official_yaml(fixture_dir / "overrides.yaml")
    missing = [p for p in info.value.problems if p.startswith("missing key")]
    assert "missing key MODEL.BACKBONE.CONV_BODY" in missing and "missing key INPUT.PIXEL_MEAN" in missing
    assert len(missing) >= 20 and "cfg.dump()" in info.value.problems[-1]


@pytest.mark.parametrize("text", ["MODEL: [1, 2", "- just\n- a list\n"])
def test_not_a_yacs_yaml(text: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="broken.yaml"):
        config_from_official_yaml(path)
    with pytest.raises(ValueError, match="no such file"):
        config_from_official_yaml(tmp_path / "absent.yaml")


# --- text configs ---------------------------------------------------------------------------------------
def test_text_config_fills_bert_defaults_and_refuses_other_models(tmp_path: Path) -> None:
    partial = tmp_path / "small.json"
    partial.write_text(
        json.dumps(
            {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 512}
        )
    )
    text = load_text_config(partial)
    assert text == {
        **BERT_BASE_UNCASED_CONFIG,
        "hidden_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 512,
    }
    roberta = tmp_path / "roberta.json"
    roberta.write_text(json.dumps({"model_type": "roberta", "hidden_size": 768}))
    with pytest.raises(ValueError, match="roberta.json: model_type = 'roberta'"):
        load_text_config(roberta)
    relative = tmp_path / "relative.json"
    relative.write_text(json.dumps({"position_embedding_type": "relative_key"}))
    with pytest.raises(ValueError, match="relative_key"):
        load_text_config(relative)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a valid JSON file"):
        load_text_config(tmp_path / "bad.json")


def test_resolve_config(fixture_dir: Path) -> None:
    bert = fixture_dir / "tiny_bert_config.json"
    assert resolve_config(arch="glip_l") == glipv2.get_config("glip_l")
    assert resolve_config(arch="glip_t", text_config=bert).text_encoder["hidden_size"] == 64
    assert (
        resolve_config(official_config=fixture_dir / "config_full.yaml", text_config=bert).num_head_blocks
        == 2
    )
    for bad in ({}, {"arch": "glip_t", "official_config": fixture_dir / "config_full.yaml"}):
        with pytest.raises(ValueError, match="exactly one of arch"):
            resolve_config(**bad)
    with pytest.raises(ValueError, match="unknown model"):
        resolve_config(arch="glip_xxl")
