"""`GLIPv2Config`: the single source of every hyper-parameter of the network.

Field names are ours; the official GLIP yacs key each one corresponds to is given in the comment
(`MODEL.` prefix dropped) so that configs of custom GLIP variants can be translated.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write_text

# bert-base-uncased's architecture, so that GLIP-T/L can be built (random or from an official
# checkpoint) without contacting the hub.
BERT_BASE_UNCASED_CONFIG: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


def read_mapping(path: str | Path, fmt: str, expected: str) -> dict[str, Any]:
    """A JSON or YAML file (`fmt` "json" | "yaml") whose top level must be a mapping; any problem is a
    `ValueError` naming the file (`expected` says what the mapping should hold)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        text = path.read_text()
        if fmt == "yaml":
            import yaml

            data = yaml.safe_load(text)
            data = {} if data is None else data  # an empty file: no entries
        else:
            data = json.loads(text)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text file ({err})") from err
    except Exception as err:
        raise ValueError(f"{path}: not a valid {fmt.upper()} file ({err})") from err
    if not isinstance(data, dict):
        # a file's content, not an argument's type: ValueError like every other bad input
        raise ValueError(f"{path}: expected {expected} at the top")
    return data


DEFORMABLE_CONV_IMPLEMENTATIONS = ("auto", "torchvision", "grid_sample", "gather")
FUSION_ATTENTION_IMPLEMENTATIONS = ("auto", "folded", "projected")
# Named sets of the compute fields: "fast" (the default) and "reference", the official arithmetic
# (torchvision's DCN, the fusion's 2048-wide projections, all 256 padded token slots) that the
# benchmarks compare against. Both agree to float rounding on every real output.
COMPUTE_PATHS: dict[str, dict[str, Any]] = {
    "fast": {"deformable_conv_impl": "auto", "fusion_attention": "auto", "trim_text_padding": True},
    "reference": {
        "deformable_conv_impl": "torchvision",
        "fusion_attention": "projected",
        "trim_text_padding": False,
    },
}


class DataclassConfig:
    """JSON round trip for config dataclasses: unknown fields are an error, lists become tuples."""

    def _coerce_tuples(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, list) and "tuple" in str(f.type):
                setattr(self, f.name, tuple(value))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **overrides: Any) -> Any:
        """A copy with some fields changed; unknown names raise `ValueError`."""
        return type(self).from_dict({**self.to_dict(), **overrides})


@dataclass
class GLIPv2Config(DataclassConfig):
    """Hyper-parameters of a GLIP / GLIPv2 model. Defaults describe GLIP-T (B/C)."""

    # --- vision backbone -----------------------------------------------------------------
    backbone: str = "swin"  # "swin" (official Swin) or "timm:<model name>" (features_only)
    swin_embed_dim: int = 96  # SWINT.EMBED_DIM
    swin_depths: tuple[int, ...] = (2, 2, 6, 2)  # SWINT.DEPTHS
    swin_num_heads: tuple[int, ...] = (3, 6, 12, 24)  # SWINT.NUM_HEADS
    swin_window_size: int = 7  # SWINT.WINDOW_SIZE
    swin_mlp_ratio: float = 4.0  # SWINT.MLP_RATIO
    swin_drop_path_rate: float = 0.2  # SWINT.DROP_PATH_RATE
    timm_pretrained: bool = False  # only for backbone="timm:*"; needs the weights cached locally
    fpn_channels: int = 256  # BACKBONE.OUT_CHANNELS
    fpn_drop_block_prob: float = 0.3  # FPN.DROP_PROB when FPN.DROP_BLOCK (training only); 0 = off
    fpn_drop_block_size: int = 3  # FPN.DROP_SIZE

    # --- text encoder (BERT family, HF transformers) ------------------------------------
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(BERT_BASE_UNCASED_CONFIG))
    text_weights: str | None = None  # None: random init; "minilm": the pip-shipped MiniLM-L6; else HF id/dir
    tokenizer: str = "bert-base-uncased"  # name, dir, or "minilm"
    max_query_len: int = 256  # LANGUAGE_BACKBONE.MAX_QUERY_LEN
    pad_to_max_query_len: bool = True  # LANGUAGE_BACKBONE.PAD_MAX (official: always 256 slots)

    # --- VL-DyHead --------------------------------------------------------------------------
    head_channels: int = 256  # DYHEAD.CHANNELS (== FUSE_CONFIG.JOINT_EMB_SIZE)
    num_head_blocks: int = 6  # DYHEAD.NUM_CONVS
    early_fusion: bool = True  # DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON
    fused_dot_product: bool = True  # DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT
    fusion_num_heads: int = 8  # hard-coded in the official VLFuse
    fusion_embed_dim: int = 2048  # hard-coded in the official VLFuse
    fusion_dropout: float = 0.1
    use_deformable_conv: bool = True  # DYHEAD.USE_DFCONV
    # how the tower computes (not hyper-parameters: every choice gives the same numbers to float
    # rounding; `COMPUTE_PATHS` names the two sets, "reference" being the official arithmetic)
    deformable_conv_impl: str = "auto"  # "auto" | "torchvision" | "grid_sample" | "gather" (deform_conv.py)
    fusion_attention: str = "auto"  # "auto" | "folded" | "projected" (fusion.py)
    trim_text_padding: bool = True  # run text encoder and tower on the real tokens only (core.py)
    use_dyrelu: bool = True  # DYHEAD.USE_DYRELU
    use_scale_attention: bool = True  # DYHEAD.USE_DYFUSE
    group_norm_groups: int = 16  # GROUP_NORM.NUM_GROUPS
    gradient_checkpointing: bool = False  # DYHEAD.USE_CHECKPOINT: recompute head blocks in backward
    legacy_num_classes: int = 80  # DYHEAD.NUM_CLASSES - 1: channels of the unused `cls_logits`
    prior_prob: float = 0.01  # DYHEAD.PRIOR_PROB
    log_scale_init: float = 0.0  # DYHEAD.LOG_SCALE

    # --- anchors -----------------------------------------------------------------------------
    anchor_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024)  # RPN.ANCHOR_SIZES
    anchor_strides: tuple[int, ...] = (8, 16, 32, 64, 128)  # RPN.ANCHOR_STRIDE

    # --- prompt tuning (official ADD_LINEAR_LAYER: a zero-initialised (rows, text_dim) table) -
    prompt_embedding_rows: int = 0  # 0 = off; official value 1000

    # --- GLIPv2 additions --------------------------------------------------------------------
    mlm_head: bool = False  # BERT LM head on the fused text features P (for L_mlm)
    region_word_contrastive_dim: int = 0  # 0 = off; projection size of O̊ and P̊ for L_inter
    region_word_contrastive_log_scale_init: float = 0.0  # DYHEAD.SHALLOW_LOG_SCALE: L_inter temperature
    # language-aware mask head (instance / referring segmentation, official VLMaskRCNNC4Predictor)
    mask_head: bool = False  # MASK_ON with ROI_MASK_HEAD.PREDICTOR "VLMaskRCNNC4Predictor"
    mask_head_channels: int = 256  # ROI_MASK_HEAD.CONV_LAYERS (each entry)
    mask_head_convs: int = 4  # len(ROI_MASK_HEAD.CONV_LAYERS)
    mask_pooler_resolution: int = 14  # ROI_MASK_HEAD.POOLER_RESOLUTION; masks are predicted at twice this
    mask_pooler_levels: int = 3  # the fused levels P3.. the ROI pooler reads (ROI_MASK_HEAD.POOLER_SCALES)
    mask_sampling_ratio: int = 2  # ROI_MASK_HEAD.POOLER_SAMPLING_RATIO
    # understanding heads (GLIPv2 §3; no official code): VQA reads the fused [CLS] of P, the
    # caption head models the next token on a causally masked P
    vqa_answers: tuple[
        str, ...
    ] = ()  # the answer vocabulary, index order (as transformers' id2label); () = no VQA head
    vqa_hidden_size: int = 0  # the answer classifier's hidden width; 0 = twice the text width (Oscar's MLP)
    caption_head: bool = False  # next-token head on P, tied to the text encoder's word embeddings
    understanding_head_layers: int = 0  # BERT layers each of the VQA and caption heads owns on top of P
    # how much of the VQA / caption gradient reaches the shared core (1 = all): below 1 the heads'
    # losses shape O and P less, and their own layers learn the task
    understanding_core_gradient_scale: float = 1.0

    # --- pre-processing constants (INPUT.*) --------------------------------------------------
    pixel_mean: tuple[float, ...] = (103.53, 116.28, 123.675)  # BGR, 0-255
    pixel_std: tuple[float, ...] = (57.375, 57.12, 58.395)
    size_divisibility: int = 32
    test_min_size: int = 800  # INPUT.MIN_SIZE_TEST: shorter side after resizing
    test_max_size: int = 1333  # INPUT.MAX_SIZE_TEST: cap on the longer side

    # --- post-processing (ATSSPostProcessor, MODEL.ATSS.*) -------------------------------------
    inference_threshold: float = 0.05  # ATSS.INFERENCE_TH: on the token score, before centerness
    pre_nms_top_n: int = 1000  # ATSS.PRE_NMS_TOP_N, per image and level
    nms_threshold: float = 0.6  # ATSS.NMS_TH, per label, legacy +1 IoU
    detections_per_image: int = 100  # ATSS.DETECTIONS_PER_IMG, per forward pass (per chunk)

    name: str = "glip_t"

    def __post_init__(self) -> None:
        self._coerce_tuples()
        self.validate()

    # ------------------------------------------------------------------------------------------
    @property
    def text_hidden_size(self) -> int:
        return int(self.text_encoder["hidden_size"])

    @property
    def num_levels(self) -> int:
        return len(self.anchor_strides)

    def validate(self) -> None:
        problems: list[str] = []
        if len(self.swin_depths) != len(self.swin_num_heads):
            problems.append("swin_depths and swin_num_heads must have the same length")
        if self.num_levels != 5 or len(self.anchor_sizes) != 5:
            problems.append("anchor_sizes and anchor_strides must describe the 5 levels P3-P7")
        if self.fusion_embed_dim % self.fusion_num_heads:
            problems.append("fusion_embed_dim must be divisible by fusion_num_heads")
        if self.head_channels % self.group_norm_groups:
            problems.append("head_channels must be divisible by group_norm_groups")
        if self.max_query_len < 2:
            problems.append("max_query_len must be at least 2 ([CLS] and [SEP])")
        if 0 < self.prompt_embedding_rows < self.max_query_len:
            problems.append(
                f"prompt_embedding_rows ({self.prompt_embedding_rows}) must be 0 (off) or at least "
                f"max_query_len ({self.max_query_len}): it holds one row per token slot"
            )
        if not (0.0 <= self.inference_threshold <= 1.0 and 0.0 <= self.nms_threshold <= 1.0):
            problems.append("inference_threshold and nms_threshold must lie in [0, 1]")
        if min(self.pre_nms_top_n, self.detections_per_image, self.test_min_size, self.test_max_size) < 1:
            problems.append(
                "pre_nms_top_n, detections_per_image, test_min_size and test_max_size must be >= 1"
            )
        for name, allowed in (
            ("deformable_conv_impl", DEFORMABLE_CONV_IMPLEMENTATIONS),
            ("fusion_attention", FUSION_ATTENTION_IMPLEMENTATIONS),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.num_head_blocks < 1:
            problems.append("num_head_blocks must be >= 1")
        if min(self.mask_head_channels, self.mask_head_convs, self.mask_pooler_resolution) < 1:
            problems.append("mask_head_channels, mask_head_convs and mask_pooler_resolution must be >= 1")
        if not 1 <= self.mask_pooler_levels <= 5:
            problems.append(f"mask_pooler_levels must be 1-5 (of P3-P7), not {self.mask_pooler_levels}")
        if len(set(self.vqa_answers)) != len(self.vqa_answers) or not all(
            isinstance(a, str) and a for a in self.vqa_answers
        ):
            problems.append("vqa_answers must be distinct, non-empty strings")
        if self.vqa_hidden_size < 0 or self.understanding_head_layers < 0:
            problems.append("vqa_hidden_size and understanding_head_layers must be >= 0")
        if not 0.0 <= self.understanding_core_gradient_scale <= 1.0:
            problems.append("understanding_core_gradient_scale must lie in [0, 1]")
        if (self.vqa_answers or self.caption_head) and not self.early_fusion:
            problems.append(
                "vqa_answers and caption_head need early_fusion: without it the text never reads the image"
            )
        for key in ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"):
            if key not in self.text_encoder:
                problems.append(f"text_encoder is missing {key!r}")
        if problems:
            raise ValueError("invalid GLIPv2Config: " + "; ".join(problems))

    def validate_fields(self, fields: dict[str, Any]) -> None:
        """Check a change of some fields before it is made (raises as `validate`)."""
        self.replace(**fields)  # the copy's __post_init__ validates it

    # --- serialisation ------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GLIPv2Config:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> GLIPv2Config:
        return cls.from_json(Path(path).read_text())
