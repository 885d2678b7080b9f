"""A `GLIPv2Config` from an official GLIP yacs config (YAML).

The input is the complete merged config as GLIP's `cfg.dump()` writes it (e.g. the `config.yml`
that training writes into OUTPUT_DIR). Keys are read with PyYAML's `safe_load`; tuples may appear
as lists (`cfg.dump()`) or as Python literals in strings (`"(2, 2, 2, 2)"`, as in hand-written
override files) — both are accepted.

Three kinds of keys are read:

* keys that determine a `GLIPv2Config` field and have no documented official default: required;
* keys whose official default (`config/defaults.py`, glip_reference.md section 2) is documented:
  that default when absent;
* switches of official features this model does not implement (ROI heads, VL-Swin, cosine
  classifier, ...): absent means off; a value we cannot represent is a `ValueError`.

The YAML does not say how large the BERT is (the parity fixture's file says `bert-base-uncased`
while its checkpoint holds a 64-wide BERT), so an optional Hugging Face `BertConfig` JSON
(`text_config`) overrides the text-encoder architecture.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from ..modeling.config import BERT_BASE_UNCASED_CONFIG, GLIPv2Config, read_mapping
from ..modeling.registry import get_config
from .official import ConversionError

_ABSENT = object()

# official `config/defaults.py` values (glip_reference.md section 2) of keys the pretrain YAMLs
# may leave unset
_DEFAULTS: dict[str, Any] = {
    "MODEL.SWINT.EMBED_DIM": 96,
    "MODEL.SWINT.DEPTHS": (2, 2, 6, 2),
    "MODEL.SWINT.NUM_HEADS": (3, 6, 12, 24),
    "MODEL.SWINT.WINDOW_SIZE": 7,
    "MODEL.SWINT.MLP_RATIO": 4.0,
    "MODEL.SWINT.DROP_PATH_RATE": 0.2,
    "MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN": 256,
    "MODEL.LANGUAGE_BACKBONE.PAD_MAX": True,
    "MODEL.LANGUAGE_BACKBONE.LANG_DIM": 768,
    "MODEL.DYHEAD.NUM_CLASSES": 81,
    "MODEL.DYHEAD.PRIOR_PROB": 0.01,
    "MODEL.DYHEAD.SHALLOW_LOG_SCALE": 0.0,
    "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE": 256,
    "MODEL.FPN.DROP_BLOCK": True,
    "MODEL.FPN.DROP_PROB": 0.3,
    "MODEL.FPN.DROP_SIZE": 3,
    "MODEL.ATSS.INFERENCE_TH": 0.05,
    "MODEL.ATSS.PRE_NMS_TOP_N": 1000,
    "MODEL.ATSS.NMS_TH": 0.6,
    "MODEL.ATSS.DETECTIONS_PER_IMG": 100,
    # default-off switches (glip_reference.md sections 5.2, 9, 11)
    "MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER": False,
    "MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS": False,
    "MODEL.DYHEAD.FUSE_CONFIG.USE_SHALLOW_CONTRASTIVE_LOSS": False,
    "MODEL.DYHEAD.FUSE_CONFIG.SHALLOW_CONTRASTIVE_HIDDEN_DIM": 64,
    "MODEL.DYHEAD.USE_CHECKPOINT": False,
}

# Switches of official features we do not implement: (key, kind, the only value we can represent,
# why). Absent = that value.
_UNSUPPORTED_UNLESS: list[tuple[str, str, Any, str]] = [
    ("MODEL.MASK_ON", "bool", False, "mask heads are not implemented"),
    ("MODEL.KEYPOINT_ON", "bool", False, "keypoint heads are not implemented"),
    ("MODEL.SWINT.VERSION", "str", "v1", "only the plain Swin (v1) backbone is implemented"),
    ("MODEL.SWINT.APE", "bool", False, "absolute position embedding is not implemented"),
    ("MODEL.SWINT.LAYER_SCALE", "float", 0.0, "Swin layer scale is not implemented"),
    ("MODEL.SWINT.OUT_NORM", "bool", True, "the backbone always normalises its outputs"),
    ("MODEL.FPN.USE_GN", "bool", False, "the FPN has no GroupNorm"),
    ("MODEL.FPN.USE_RELU", "bool", False, "the FPN has no ReLU"),
    ("MODEL.FPN.USE_DYHEAD", "bool", False, "FPN-side DyHead is not implemented"),
    ("MODEL.FPN.USE_SPP", "bool", False, "SPP is not implemented"),
    ("MODEL.FPN.USE_PAN", "bool", False, "PAN is not implemented"),
    ("MODEL.RPN.USE_FPN", "bool", True, "the head runs on the FPN levels P3-P7"),
    ("MODEL.RPN.USE_RELATIVE_SIZE", "bool", False, "anchors have absolute sizes"),
    ("MODEL.DYHEAD.USE_GN", "bool", True, "the DyHead convs are followed by GroupNorm"),
    ("MODEL.DYHEAD.CONV_FUNC", "str", "", "custom DyHead conv functions are not implemented"),
    ("MODEL.DYHEAD.FUSE_CONFIG.USE_LAYER_SCALE", "bool", True, "the fusion always has layer-scale vectors"),
    (
        "MODEL.DYHEAD.FUSE_CONFIG.SEPARATE_BIDIRECTIONAL",
        "bool",
        False,
        "only the shared-score bi-directional attention is implemented",
    ),
    (
        "MODEL.DYHEAD.FUSE_CONFIG.STABLE_SOFTMAX_2D",
        "bool",
        False,
        "the 2-D stable softmax is not implemented",
    ),
    (
        "MODEL.DYHEAD.FUSE_CONFIG.USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS",
        "bool",
        False,
        "region-word contrastive features come from the FPN, not from Swin C4",
    ),
    ("MODEL.LANGUAGE_BACKBONE.N_LAYERS", "int", 1, "the text features are BERT's last layer"),
    ("MODEL.LANGUAGE_BACKBONE.MASK_SPECIAL", "bool", False, "special tokens are never masked out"),
    ("INPUT.TO_BGR255", "bool", True, "images are normalised as BGR in 0-255"),
]

# `GLIPv2Config` fields filled from a BertConfig, in this order.
TEXT_ENCODER_KEYS: tuple[str, ...] = tuple(BERT_BASE_UNCASED_CONFIG)

# GLIP's VLFuse hard-codes these (glip_reference.md section 5.2)
_FUSION_NUM_HEADS, _FUSION_EMBED_DIM, _FUSION_DROPOUT = 8, 2048, 0.1
# rows of official `rpn.tunable_linear` (ADD_LINEAR_LAYER)
PROMPT_EMBEDDING_ROWS = 1000


def read_official_yaml(path: str | Path) -> dict[str, Any]:
    """The YAML as nested dicts (`yaml.safe_load`), or `ValueError` naming the file."""
    return read_mapping(path, "yaml", "a mapping of yacs keys (MODEL:, ...)")


def load_text_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Our `text_encoder` dict from a Hugging Face BertConfig (a `config.json` path or its dict);
    keys the file leaves out take `BertConfig`'s defaults."""
    from transformers import BertConfig

    where = "text config" if isinstance(source, dict) else str(source)
    if isinstance(source, dict):
        data = dict(source)
    else:
        data = read_mapping(source, "json", "a JSON object (a Hugging Face BertConfig)")
    model_type = data.get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(
            f"{where}: model_type = {model_type!r}; the text encoder must be a BERT (model_type 'bert')"
        )
    position = data.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ValueError(f"{where}: position_embedding_type = {position!r}; only 'absolute' is supported")
    try:
        bert = BertConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: not a valid BertConfig ({err})") from err
    return {key: getattr(bert, key) for key in TEXT_ENCODER_KEYS}


def config_from_official_yaml(
    path: str | Path, text_config: str | Path | dict[str, Any] | None = None, name: str | None = None
) -> GLIPv2Config:
    """Derive the `GLIPv2Config` of the model an official GLIP YAML describes.

    `text_config`: the checkpoint's BertConfig (JSON path or dict) when it is not the architecture
    of `MODEL.LANGUAGE_BACKBONE.MODEL_TYPE` (only bert-base-uncased's is built in). `name`:
    the config's name, default the YAML file's stem. Raises `ConversionError` (a `ValueError`)
    listing every missing key and every value this model cannot represent."""
    path = Path(path)
    return config_from_official_dict(
        read_official_yaml(path), text_config=text_config, name=name or path.stem, source=str(path)
    )


def config_from_official_dict(
    cfg: dict[str, Any],
    text_config: str | Path | dict[str, Any] | None = None,
    name: str = "glip_official",
    source: str = "official config",
) -> GLIPv2Config:
    """`config_from_official_yaml` for an already parsed yacs dict."""
    r = _Reader(cfg, source)
    # --- read everything first, so that one error lists every missing key ----------------------
    arch = {
        k: r.get(k, "str")
        for k in (
            "MODEL.META_ARCHITECTURE",
            "MODEL.RPN_ARCHITECTURE",
            "MODEL.BACKBONE.CONV_BODY",
            "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE",
            "MODEL.DYHEAD.FUSE_CONFIG.TYPE",
        )
    }
    rpn_only = r.get("MODEL.RPN_ONLY", "bool")
    swin = {
        k: r.get(f"MODEL.SWINT.{k}", kind)
        for k, kind in (
            ("EMBED_DIM", "int"),
            ("DEPTHS", "ints"),
            ("NUM_HEADS", "ints"),
            ("WINDOW_SIZE", "int"),
            ("MLP_RATIO", "float"),
            ("DROP_PATH_RATE", "float"),
        )
    }
    swin_out = r.get("MODEL.SWINT.OUT_CHANNELS", "ints", None)
    fpn_channels = r.get("MODEL.BACKBONE.OUT_CHANNELS", "int")
    drop_block = r.get("MODEL.FPN.DROP_BLOCK", "bool")
    drop_prob = r.get("MODEL.FPN.DROP_PROB", "float")
    drop_size = r.get("MODEL.FPN.DROP_SIZE", "int")
    lang = {
        k: r.get(f"MODEL.LANGUAGE_BACKBONE.{k}", kind)
        for k, kind in (("MAX_QUERY_LEN", "int"), ("PAD_MAX", "bool"), ("LANG_DIM", "int"))
    }
    tokenizer_type = r.get("MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE", "str", None)
    dyhead = {
        k: r.get(f"MODEL.DYHEAD.{k}", kind)
        for k, kind in (
            ("CHANNELS", "int"),
            ("NUM_CONVS", "int"),
            ("NUM_CLASSES", "int"),
            ("USE_DYFUSE", "bool"),
            ("USE_DYRELU", "bool"),
            ("USE_DFCONV", "bool"),
            ("LOG_SCALE", "float"),
            ("PRIOR_PROB", "float"),
            ("SHALLOW_LOG_SCALE", "float"),
            ("USE_CHECKPOINT", "bool"),
        )
    }
    cosine_scale = r.get("MODEL.DYHEAD.COSINE_SCALE", "float", -1.0)
    fuse = {
        k: r.get(f"MODEL.DYHEAD.FUSE_CONFIG.{k}", kind)
        for k, kind in (
            ("EARLY_FUSE_ON", "bool"),
            ("USE_FUSED_FEATURES_DOT_PRODUCT", "bool"),
            ("JOINT_EMB_SIZE", "int"),
            ("ADD_LINEAR_LAYER", "bool"),
            ("MLM_LOSS", "bool"),
            ("USE_SHALLOW_CONTRASTIVE_LOSS", "bool"),
            ("SHALLOW_CONTRASTIVE_HIDDEN_DIM", "int"),
        )
    }
    gn_groups = r.get("MODEL.GROUP_NORM.NUM_GROUPS", "int")
    anchors = {
        k: r.get(f"MODEL.RPN.{k}", kind)
        for k, kind in (
            ("ANCHOR_SIZES", "ints"),
            ("ANCHOR_STRIDE", "ints"),
            ("ASPECT_RATIOS", "floats"),
            ("SCALES_PER_OCTAVE", "int"),
        )
    }
    anchor_shift = r.get("MODEL.RPN.ANCHOR_SHIFT", "floats", None)
    pixel_mean = r.get("INPUT.PIXEL_MEAN", "floats")
    pixel_std = r.get("INPUT.PIXEL_STD", "floats")
    min_size = r.get("INPUT.MIN_SIZE_TEST", "int")
    max_size = r.get("INPUT.MAX_SIZE_TEST", "int")
    divisibility = r.get("DATALOADER.SIZE_DIVISIBILITY", "int")
    atss = {
        k: r.get(f"MODEL.ATSS.{k}", kind)
        for k, kind in (
            ("INFERENCE_TH", "float"),
            ("PRE_NMS_TOP_N", "int"),
            ("NMS_TH", "float"),
            ("DETECTIONS_PER_IMG", "int"),
        )
    }
    for key, kind, supported, why in _UNSUPPORTED_UNLESS:
        value = r.get(key, kind, supported)
        if value is not None and value != supported:
            r.unsupported(key, value, why)
    r.raise_if_any(missing_hint=True)

    # --- values we cannot represent ------------------------------------------------------------
    r.expect("MODEL.META_ARCHITECTURE", arch["MODEL.META_ARCHITECTURE"], "GeneralizedVLRCNN")
    r.expect("MODEL.RPN_ARCHITECTURE", arch["MODEL.RPN_ARCHITECTURE"], "VLDYHEAD")
    r.expect("MODEL.RPN_ONLY", rpn_only, True, "ROI heads are not implemented")
    r.expect("MODEL.BACKBONE.CONV_BODY", arch["MODEL.BACKBONE.CONV_BODY"], "SWINT-FPN-RETINANET")
    depths, heads, embed = swin["DEPTHS"], swin["NUM_HEADS"], swin["EMBED_DIM"]
    if len(depths) != 4:
        r.unsupported("MODEL.SWINT.DEPTHS", depths, "the Swin must have 4 stages (C3-C5 feed P3-P5)")
    if len(heads) != len(depths):
        r.unsupported("MODEL.SWINT.NUM_HEADS", heads, f"needs one entry per stage ({len(depths)})")
    widths = tuple(embed * 2**i for i in range(len(depths)))
    if swin_out is not None and tuple(swin_out) != widths:
        r.unsupported(
            "MODEL.SWINT.OUT_CHANNELS", swin_out, f"a Swin with EMBED_DIM {embed} has widths {widths}"
        )
    if cosine_scale > 0:
        r.unsupported("MODEL.DYHEAD.COSINE_SCALE", cosine_scale, "the cosine classifier is not implemented")
    early = fuse["EARLY_FUSE_ON"]
    channels = dyhead["CHANNELS"]
    if early:
        r.expect(
            "MODEL.DYHEAD.FUSE_CONFIG.TYPE",
            arch["MODEL.DYHEAD.FUSE_CONFIG.TYPE"],
            "MHA-B",
            "only the bi-directional multi-head attention fusion (MHA-B) is implemented",
        )
        if fuse["JOINT_EMB_SIZE"] != channels or fpn_channels != channels:
            r.unsupported(
                "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE",
                fuse["JOINT_EMB_SIZE"],
                f"with early fusion it must equal DYHEAD.CHANNELS ({channels}) and "
                f"BACKBONE.OUT_CHANNELS ({fpn_channels})",
            )
    if fuse["USE_SHALLOW_CONTRASTIVE_LOSS"] and fpn_channels != channels:
        r.unsupported(
            "MODEL.DYHEAD.FUSE_CONFIG.USE_SHALLOW_CONTRASTIVE_LOSS",
            True,
            "the region-word projection takes FPN features, so DYHEAD.CHANNELS must equal "
            "BACKBONE.OUT_CHANNELS",
        )
    r.expect("MODEL.RPN.ASPECT_RATIOS", tuple(anchors["ASPECT_RATIOS"]), (1.0,), "one anchor per location")
    r.expect("MODEL.RPN.SCALES_PER_OCTAVE", anchors["SCALES_PER_OCTAVE"], 1, "one anchor per location")
    if anchor_shift is not None and any(anchor_shift):
        r.unsupported("MODEL.RPN.ANCHOR_SHIFT", anchor_shift, "anchors are not shifted")
    if tokenizer_type == "clip":
        r.unsupported(
            "MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE", tokenizer_type, "the tokenizer is BERT WordPiece"
        )
    text = _text_encoder(r, arch["MODEL.LANGUAGE_BACKBONE.MODEL_TYPE"], lang["LANG_DIM"], text_config)
    r.raise_if_any()

    fields: dict[str, Any] = {
        "name": name,
        "backbone": "swin",
        "swin_embed_dim": embed,
        "swin_depths": depths,
        "swin_num_heads": heads,
        "swin_window_size": swin["WINDOW_SIZE"],
        "swin_mlp_ratio": swin["MLP_RATIO"],
        "swin_drop_path_rate": swin["DROP_PATH_RATE"],
        "fpn_channels": fpn_channels,
        "fpn_drop_block_prob": drop_prob if drop_block else 0.0,
        "fpn_drop_block_size": drop_size,
        "text_encoder": text,
        "text_weights": None,
        "tokenizer": arch["MODEL.LANGUAGE_BACKBONE.MODEL_TYPE"],
        "max_query_len": lang["MAX_QUERY_LEN"],
        "pad_to_max_query_len": lang["PAD_MAX"],
        "head_channels": channels,
        "num_head_blocks": dyhead["NUM_CONVS"],
        "early_fusion": early,
        "fused_dot_product": fuse["USE_FUSED_FEATURES_DOT_PRODUCT"],
        "fusion_num_heads": _FUSION_NUM_HEADS,
        "fusion_embed_dim": _FUSION_EMBED_DIM,
        "fusion_dropout": _FUSION_DROPOUT,
        "use_deformable_conv": dyhead["USE_DFCONV"],
        "use_dyrelu": dyhead["USE_DYRELU"],
        "use_scale_attention": dyhead["USE_DYFUSE"],
        "group_norm_groups": gn_groups,
        "gradient_checkpointing": dyhead["USE_CHECKPOINT"],
        "legacy_num_classes": dyhead["NUM_CLASSES"] - 1,
        "prior_prob": dyhead["PRIOR_PROB"],
        "log_scale_init": dyhead["LOG_SCALE"],
        "anchor_sizes": anchors["ANCHOR_SIZES"],
        "anchor_strides": anchors["ANCHOR_STRIDE"],
        "prompt_embedding_rows": PROMPT_EMBEDDING_ROWS if fuse["ADD_LINEAR_LAYER"] else 0,
        "mlm_head": fuse["MLM_LOSS"],
        "region_word_contrastive_dim": (
            fuse["SHALLOW_CONTRASTIVE_HIDDEN_DIM"] if fuse["USE_SHALLOW_CONTRASTIVE_LOSS"] else 0
        ),
        "region_word_contrastive_log_scale_init": dyhead["SHALLOW_LOG_SCALE"],
        "pixel_mean": pixel_mean,
        "pixel_std": pixel_std,
        "size_divisibility": divisibility,
    }
    # pre- and post-processing settings
    fields.update(
        {
            "test_min_size": min_size,
            "test_max_size": max_size,
            "inference_threshold": atss["INFERENCE_TH"],
            "pre_nms_top_n": atss["PRE_NMS_TOP_N"],
            "nms_threshold": atss["NMS_TH"],
            "detections_per_image": atss["DETECTIONS_PER_IMG"],
        }
    )
    try:
        return GLIPv2Config(**fields)
    except ValueError as err:
        raise ConversionError(source, [str(err)], what="does not describe a valid model") from err


def resolve_config(
    arch: str | None = None,
    official_config: str | Path | None = None,
    text_config: str | Path | dict[str, Any] | None = None,
) -> GLIPv2Config:
    """The config of an official checkpoint: a preset (`arch`, e.g. "glip_t") or an official
    YAML; `text_config` replaces the preset's / YAML's BERT architecture."""
    if (arch is None) == (official_config is None):
        raise ValueError(
            "give exactly one of arch (a preset such as glip_t, glip_t_a, glip_l) "
            "and official_config (an official GLIP YAML)"
        )
    if official_config is not None:
        return config_from_official_yaml(official_config, text_config=text_config)
    config = get_config(str(arch))
    return config.replace(text_encoder=load_text_config(text_config)) if text_config is not None else config


# ------------------------------------------------------------------------------------------------
def _text_encoder(
    r: _Reader, model_type: str, lang_dim: int, text_config: str | Path | dict[str, Any] | None
) -> dict[str, Any] | None:
    key = "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE"
    if not model_type.rsplit("/", 1)[-1].lower().startswith("bert"):
        r.unsupported(key, model_type, "the text encoder must be a BERT (Hugging Face BertModel)")
        return None
    if text_config is not None:
        text = load_text_config(text_config)
        given = "the text config's"
    elif model_type == "bert-base-uncased":
        text = dict(BERT_BASE_UNCASED_CONFIG)
        given = "bert-base-uncased's"
    else:
        r.problems.append(
            f"{key} = {model_type!r}: its architecture is not built in; pass the checkpoint's "
            "BERT config (a Hugging Face BertConfig JSON) as text_config / --text-config"
        )
        return None
    if text["hidden_size"] != lang_dim:
        hint = (
            ""
            if text_config is not None
            else (
                "; if the checkpoint's BERT is not bert-base-uncased, pass its BertConfig JSON as "
                "text_config / --text-config"
            )
        )
        r.problems.append(
            f"MODEL.LANGUAGE_BACKBONE.LANG_DIM = {lang_dim} differs from {given} hidden size "
            f"{text['hidden_size']}{hint}"
        )
    return text


class _Reader:
    """Typed access to dotted yacs keys; collects missing keys and bad values."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.data, self.source = data, source
        self.missing: list[str] = []
        self.problems: list[str] = []

    def get(self, key: str, kind: str, default: Any = _ABSENT) -> Any:
        """The value of `key` as `kind` (bool, int, float, str, ints, floats); `default`, else the
        documented official default, when absent; None (and a recorded problem) otherwise."""
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is not _ABSENT:
                    return default
                if key in _DEFAULTS:
                    return _DEFAULTS[key]
                self.missing.append(key)
                return None
            node = node[part]
        try:
            return _coerce(node, kind)
        except ValueError as err:
            self.problems.append(f"{key} = {node!r}: {err}")
            return None

    def unsupported(self, key: str, value: Any, why: str) -> None:
        self.problems.append(f"{key} = {value!r} is not supported: {why}")

    def expect(self, key: str, value: Any, supported: Any, why: str | None = None) -> None:
        if value != supported:
            self.unsupported(key, value, why or f"only {supported!r} is implemented")

    def raise_if_any(self, missing_hint: bool = False) -> None:
        problems = [f"missing key {k}" for k in self.missing] + self.problems
        if self.missing and missing_hint:
            problems.append(
                "give the complete merged config (cfg.dump(), e.g. the config.yml GLIP writes "
                "into OUTPUT_DIR), not a partial configs/*.yaml"
            )
        if problems:
            raise ConversionError(self.source, problems, what="does not describe a model glipv2 can build")


def _coerce(value: Any, kind: str) -> Any:
    """yacs values as YAML gives them; strings holding Python literals (`"(2, 2)"`, `"False"`)
    are parsed, as yacs itself does when merging."""
    if isinstance(value, str) and kind != "str":
        try:
            value = ast.literal_eval(value.strip())
        # literal_eval also raises TypeError ("{[]: 1}": an unhashable key) and, on deep nesting,
        # MemoryError / RecursionError: every one means "not a literal yacs could have written"
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
            raise ValueError(f"expected {kind}, got a string that is not a Python literal") from err
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind == "str":
        if isinstance(value, str):
            return value
    elif kind in ("ints", "floats"):
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(v, kind[:-1]) for v in value)
    else:  # pragma: no cover - programming error
        raise AssertionError(kind)
    raise ValueError(f"expected {kind}, got {type(value).__name__}")
