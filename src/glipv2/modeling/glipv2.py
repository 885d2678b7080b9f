"""The GLIPv2 network: backbone + FPN, text encoder, VL-DyHead, GLIPv2 heads; save / load."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerFast

from ..processing.text import TokenizedPrompts, tokenize_prompts
from .anchors import AnchorGenerator
from .backbone import build_backbone
from .config import GLIPv2Config
from .fpn import FPN
from .mask_head import LanguageAwareMaskHead
from .mlm_head import MLMHead
from .outputs import GLIPv2Output
from .text_encoder import TextEncoder, TextFeatures, load_tokenizer, state_fingerprint
from .vl_dyhead import VLDyHead

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
TEXT_PREFIX = "text_encoder."


class RegionWordContrastiveProjection(nn.Module):
    """Projections of the pre-fusion O̊ and P̊ into a shared space for L_inter, with a learnable
    temperature (official `shallow_contrastive_projection_{image,text}`, `shallow_log_scale`)."""

    def __init__(self, region_dim: int, token_dim: int, dim: int, log_scale_init: float = 0.0) -> None:
        super().__init__()
        self.region = nn.Linear(region_dim, dim)
        self.token = nn.Linear(token_dim, dim)
        self.log_scale = nn.Parameter(torch.full((1,), float(log_scale_init)))


class GLIPv2(nn.Module):
    """GLIP / GLIPv2 grounding model.

    Inputs are normalised images (see `glipv2.processing.image`) and tokenized prompts; the
    output exposes the region–word logits S = O·Pᵀ and box predictions per level, and the
    pre-/post-fusion features of both modalities (`GLIPv2Output`).
    """

    def __init__(self, config: GLIPv2Config, load_text_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config)
        self.fpn = FPN(self.backbone.out_channels, config.fpn_channels, config.fpn_drop_block_prob,
                       config.fpn_drop_block_size)
        self.text_encoder = TextEncoder(config.text_encoder, config.text_weights if load_text_weights else None)
        self.prompt_embedding = (nn.Parameter(torch.zeros(config.prompt_embedding_rows, config.text_hidden_size))
                                 if config.prompt_embedding_rows else None)
        self.head = VLDyHead(config)
        self.anchor_generator = AnchorGenerator(config.anchor_sizes, config.anchor_strides)
        self.mlm_head = MLMHead(config) if config.mlm_head else None
        self.region_word_contrastive = (
            RegionWordContrastiveProjection(config.fpn_channels, config.text_hidden_size,
                                            config.region_word_contrastive_dim,
                                            config.region_word_contrastive_log_scale_init)
            if config.region_word_contrastive_dim else None)
        self.mask_head = LanguageAwareMaskHead(config) if config.mask_head else None
        self.tokenizer_source: str = config.tokenizer
        self._tokenizer: PreTrainedTokenizerFast | None = None

    # ------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_source)
        return self._tokenizer

    def tokenize(self, prompts: str | list[str]) -> TokenizedPrompts:
        """Tokenize prompts with this model's tokenizer and padding policy (official: 256 slots)."""
        return tokenize_prompts(self.tokenizer, prompts, self.config.max_query_len,
                                self.config.pad_to_max_query_len)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """P̊: the text encoder's features; cacheable across images that share a prompt."""
        _check_text(input_ids, attention_mask, self.config.max_query_len)
        return self.text_encoder(input_ids, attention_mask)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        text_features: TextFeatures | None = None,
        return_legacy_logits: bool = False,
        return_mlm_logits: bool | None = None,
        mask_boxes: Sequence[torch.Tensor] | None = None,
        mask_token_weights: Sequence[torch.Tensor] | None = None,
    ) -> GLIPv2Output:
        """pixel_values: (B, 3, H, W) normalised BGR images (any H, W; padding at bottom/right);
        input_ids, attention_mask: (B or 1, T) tokens, or pre-computed `text_features`;
        image_sizes: (B, 2) unpadded (h, w), default the full tensor size;
        mask_boxes, mask_token_weights: per image (N_i, 4) boxes in input pixels and (N_i, T) the
        tokens of each box's phrase, for `mask_logits` (training: the ground truth, as the mask loss
        needs them inside the forward; inference: see `predict_mask_logits`)."""
        _check_images(pixel_values)
        batch = pixel_values.shape[0]
        if text_features is None:
            if input_ids is None or attention_mask is None:
                raise ValueError("give input_ids and attention_mask, or text_features")
            text_features = self.encode_text(input_ids, attention_mask)
        text_features = _broadcast_text(text_features, batch)
        if image_sizes is None:
            image_sizes = torch.tensor([list(pixel_values.shape[-2:])] * batch)
        image_sizes = _check_image_sizes(image_sizes, pixel_values)

        region_features = self.fpn(self.backbone(pixel_values))  # O̊ per level
        hidden, embedded, mask = text_features.hidden, text_features.embedded, text_features.mask
        if self.prompt_embedding is not None:
            # prompt tuning (official ADD_LINEAR_LAYER): a learned per-position offset on P̊
            offset = self.prompt_embedding[: hidden.shape[1]].unsqueeze(0)
            hidden, embedded = hidden + offset, embedded + offset
        head = self.head(region_features, hidden, embedded, mask, return_legacy_logits)
        anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in region_features])

        want_mlm = self.training if return_mlm_logits is None else return_mlm_logits
        mlm_logits = self.mlm_head(head.fused_text) if (self.mlm_head is not None and want_mlm) else None
        mask_logits = None
        if mask_boxes is not None:
            if mask_token_weights is None:
                raise ValueError("mask_boxes needs mask_token_weights (the tokens of each box's phrase)")
            mask_logits = self._mask_head()(head.fused_visual, mask_boxes, head.fused_text, mask_token_weights)
        return GLIPv2Output(
            logits=head.logits, box_regression=head.box_regression, centerness=head.centerness,
            anchors=anchors, region_features=region_features, token_features=hidden,
            fused_region_features=head.fused_visual, fused_token_features=head.fused_text,
            token_embeddings=head.token_embeddings, text_attention_mask=mask, image_sizes=image_sizes,
            mlm_logits=mlm_logits, legacy_cls_logits=head.legacy_cls_logits, mask_logits=mask_logits,
        )

    def predict_mask_logits(self, output: GLIPv2Output, boxes: Sequence[torch.Tensor],
                            token_weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Mask logits (N_i, M, M) inside each of `boxes` (per image (N_i, 4), input pixels) for the
        phrase given by `token_weights` (per image (N_i, T)), from a finished forward's fused O and P."""
        return self._mask_head()(output.fused_region_features, boxes, output.fused_token_features, token_weights)

    def _mask_head(self) -> LanguageAwareMaskHead:
        if self.mask_head is None:
            raise ValueError(f"{self.config.name} has no mask head (GLIPv2Config.mask_head is False)")
        return self.mask_head

    # --- persistence -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str], save_tokenizer: bool = True,
                        reference_text_weights: bool = False) -> Path:
        """Write `config.json`, `model.safetensors` (and the tokenizer files) into `directory`.

        reference_text_weights: leave the text encoder out of the weights file and record its
        pretrained source (`config.text_weights`, e.g. the MiniLM package) with a fingerprint
        instead — for a model trained with a frozen text encoder (the shipped tiny weights). Loading
        rebuilds it from that source and refuses a source whose weights differ."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.config.save(out / CONFIG_NAME)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        metadata = {"format": "pt", "library": "glipv2"}
        if reference_text_weights:
            metadata.update(self._text_weights_reference(state))
            state = {k: v for k, v in state.items() if not k.startswith(TEXT_PREFIX)}
        tmp = out / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, out / WEIGHTS_NAME)  # never leave a half-written weights file
        if save_tokenizer:
            self.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
        return out

    def _text_weights_reference(self, state: dict[str, torch.Tensor]) -> dict[str, str]:
        source = self.config.text_weights
        if not source:
            raise ValueError("reference_text_weights needs a pretrained text encoder source (config.text_weights)")
        ours = state_fingerprint({k: v for k, v in state.items() if k.startswith(TEXT_PREFIX)})
        pretrained = TextEncoder(self.config.text_encoder, source).state_dict()
        if ours != state_fingerprint({TEXT_PREFIX + k: v for k, v in pretrained.items()}):
            raise ValueError(f"the text encoder differs from its pretrained source {source!r} (was it trained?); "
                             "save it with the weights (reference_text_weights=False)")
        return {"text_weights": source, "text_weights_sha256": ours}

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], revision: str | None = None,
                        map_location: str | torch.device = "cpu", *, filename: str | None = None,
                        arch: str | None = None, official_config: str | os.PathLike[str] | None = None,
                        text_config: str | os.PathLike[str] | None = None, allow_pickle: bool = False,
                        **config_overrides: Any) -> GLIPv2:
        """Load a folder written by `save_pretrained`, or download one from the Hugging Face hub.

        An official GLIP checkpoint — `filename="<name>.pth"` inside a hub repo (e.g.
        `from_pretrained("GLIPModel/GLIP", filename="glip_tiny_model_o365_goldg.pth")`), or a local
        `.pth` path — is converted once into `$GLIPV2_CACHE/converted` (default `~/.cache/glipv2`)
        and loaded from there. Its architecture comes from the released file name, or from `arch`
        (a preset: glip_t, glip_t_a, glip_l) or `official_config` (the GLIP YAML), with
        `text_config` (a BertConfig JSON) when its BERT is not bert-base-uncased. `allow_pickle`
        lets the converter unpickle a file that `torch.load(weights_only=True)` refuses."""
        official = {"filename": filename, "arch": arch, "official_config": official_config,
                    "text_config": text_config}
        if (filename or str(name_or_path)).endswith(".pth"):
            from ..convert.hub import converted_model_dir

            directory = converted_model_dir(str(name_or_path), filename, revision, arch=arch,
                                            official_config=official_config, text_config=text_config,
                                            allow_pickle=allow_pickle)
        elif given := sorted(k for k, v in official.items() if v is not None):
            raise ValueError(f"{', '.join(given)}: only for official GLIP .pth checkpoints "
                             f"(filename='<name>.pth' or a local .pth path), not {name_or_path!r}")
        else:
            directory = _resolve_model_dir(str(name_or_path), revision)
        config = GLIPv2Config.load(directory / CONFIG_NAME)
        if config_overrides:
            config = config.replace(**config_overrides)
        weights = directory / WEIGHTS_NAME
        with safe_open(str(weights), "pt") as f:
            metadata = f.metadata() or {}
        referenced = metadata.get("text_weights")
        if referenced is not None and referenced != config.text_weights:
            raise ValueError(f"{weights}: refers to text weights {referenced!r}, the config to {config.text_weights!r}")
        model = cls(config, load_text_weights=referenced is not None)
        state = load_file(str(weights), device=str(map_location))
        if referenced is not None:
            text_state = {TEXT_PREFIX + k: v for k, v in model.text_encoder.state_dict().items()}
            if state_fingerprint(text_state) != metadata.get("text_weights_sha256"):
                raise ValueError(f"{weights}: the installed text weights {referenced!r} differ from the ones this "
                                 "model was trained with")
            state.update(text_state)
        if config_overrides:
            # a head switched off by the overrides (e.g. mlm_head=False for fine-tuning) drops its weights
            state = {k: v for k, v in state.items() if getattr(model, k.split(".")[0], True) is not None}
        load_state_dict_strict(model, state, source=str(weights))
        if (directory / TOKENIZER_DIR).is_dir():
            model.tokenizer_source = str(directory / TOKENIZER_DIR)
        return model.eval()


# ------------------------------------------------------------------------------------------------
def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Load `state` into `model`, raising one readable `ValueError` listing every missing,
    unexpected and shape-mismatched key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k}: expected {tuple(own[k].shape)}, got {tuple(state[k].shape)}"
                        for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        lines = [f"cannot load {source}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}):")
                lines.extend(f"    {k}" for k in keys)
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def _resolve_model_dir(name_or_path: str, revision: str | None) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise ValueError(f"{path} is not a glipv2 model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        return path
    if path.exists() or name_or_path.count("/") != 1:
        raise ValueError(f"{name_or_path!r} is neither a model folder nor a hub id 'owner/name'")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(name_or_path, revision=revision,
                                  allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, f"{TOKENIZER_DIR}/*"])
    except Exception as err:  # offline, unknown repo, no access: say which and why
        raise ValueError(f"could not fetch {name_or_path!r} from the Hugging Face hub: {err}") from err
    return _resolve_model_dir(local, None)


def _check_images(pixel_values: torch.Tensor) -> None:
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"pixel_values must have shape (B, 3, H, W), got {tuple(pixel_values.shape)}")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be a float tensor (normalised image), got {pixel_values.dtype}")
    if min(pixel_values.shape[-2:]) < 1 or pixel_values.shape[0] < 1:
        raise ValueError(f"pixel_values is empty: {tuple(pixel_values.shape)}")


def _check_text(input_ids: torch.Tensor, attention_mask: torch.Tensor, max_len: int) -> None:
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids and attention_mask must both be (B, T), got {tuple(input_ids.shape)} and "
                         f"{tuple(attention_mask.shape)}")
    if input_ids.is_floating_point():
        raise ValueError(f"input_ids must be integer token ids, got {input_ids.dtype}")
    if input_ids.shape[1] > max_len:
        raise ValueError(f"prompt has {input_ids.shape[1]} tokens, more than max_query_len={max_len}; "
                         "split long vocabularies into chunks")
    if input_ids.shape[1] == 0 or bool((attention_mask.sum(dim=1) == 0).any()):
        raise ValueError("empty text: every prompt needs at least one token")


def _broadcast_text(features: TextFeatures, batch: int) -> TextFeatures:
    n = features.hidden.shape[0]
    if n == batch:
        return features
    if n == 1:
        return TextFeatures(*(t.expand(batch, *t.shape[1:]) for t in (features.hidden, features.embedded,
                                                                      features.mask)))
    raise ValueError(f"{n} prompts for {batch} images: give one prompt, or one per image")


def _check_image_sizes(image_sizes: torch.Tensor | list[list[int]], pixel_values: torch.Tensor) -> torch.Tensor:
    sizes = torch.as_tensor(image_sizes, dtype=torch.long)
    b, _, h, w = pixel_values.shape
    if sizes.shape != (b, 2):
        raise ValueError(f"image_sizes must be (B, 2) = ({b}, 2), got {tuple(sizes.shape)}")
    if bool((sizes < 1).any()) or bool((sizes[:, 0] > h).any()) or bool((sizes[:, 1] > w).any()):
        raise ValueError(f"image_sizes {sizes.tolist()} do not fit the padded batch of size {h}x{w}")
    return sizes
