"""The GLIPv2 network: the core (backbone → FPN → text encoder → fusion tower) and the task heads
on it; its training losses; save / load."""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils.io import MissingPath, atomic_path, looks_like_path
from ..utils.shipped import shipped_model_dir
from .config import COMPUTE_PATHS, GLIPv2Config
from .core import GLIPv2Core
from .criterion import GLIPv2Criterion
from .heads import HeadInputs, LossConfig, beam_search, build_heads, greedy_decode
from .heads import head_options as registered_head_options
from .outputs import CoreOutput, GLIPv2Output
from .text_encoder import TextEncoder, TextFeatures, state_fingerprint

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
TEXT_PREFIX = "core.text_encoder."
# state-dict layout of the weights file: 1 = the flat one before the core/heads split (no metadata
# entry), 2 = `core.*` and `heads.<name>.*`
STATE_LAYOUT = "2"


class GLIPv2(nn.Module):
    """GLIP / GLIPv2: `core` gives the pre- and post-fusion features O̊, P̊, O, P; `heads` (by name:
    grounding, mask, mlm, inter, and any registered one) read them.

    In eval mode, or without `targets`, `forward` returns a `GLIPv2Output`; in train mode with
    `targets` it returns the loss dict of `GLIPv2Criterion` (detectron2's idiom), so that the whole
    objective runs inside the (DDP-wrapped) forward.
    """

    def __init__(self, config: GLIPv2Config, load_text_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        self.core = GLIPv2Core(config, load_text_weights)
        self.heads = nn.ModuleDict(build_heads(config))
        if "caption" in self.heads:  # next-token logits through the text encoder's input table
            self.heads["caption"].tie_output(self.core.text_encoder.word_embeddings)
        self.loss_config = LossConfig.for_model(config)
        self.name_or_path: str | None = None  # the folder it was loaded from (the processor lives there too)

    # ------------------------------------------------------------------------------------------
    @property
    def loss_config(self) -> LossConfig:
        return self._loss_config

    @loss_config.setter
    def loss_config(self, config: LossConfig) -> None:
        self._loss_config = config
        # not a submodule: it holds no parameters of its own, only references to the heads
        object.__setattr__(self, "_criterion", GLIPv2Criterion(config, dict(self.heads.items())))

    @property
    def criterion(self) -> GLIPv2Criterion:
        return self._criterion

    @property
    def text_encoder(self) -> TextEncoder:
        return self.core.text_encoder

    @property
    def prompt_embedding(self) -> nn.Parameter | None:
        return self.core.prompt_embedding

    @property
    def mask_head(self) -> nn.Module | None:
        return self.heads["mask"] if "mask" in self.heads else None  # noqa: SIM401 (ModuleDict has no .get)

    def set_compute_path(self, path: str) -> None:
        """Switch every compute field at once: "fast" (the default) or "reference", the official
        arithmetic (torchvision's DCN, the fusion's wide projections, all padded token slots);
        see `COMPUTE_PATHS`. The weights and the real outputs stay the same."""
        if path not in COMPUTE_PATHS:
            raise ValueError(f"unknown compute path {path!r}; choose from {', '.join(COMPUTE_PATHS)}")
        self.set_compute(**COMPUTE_PATHS[path])

    def set_compute(self, **fields: Any) -> None:
        """Set compute fields (`deformable_conv_impl`, `fusion_attention`, `trim_text_padding`) on
        the config and on the modules that read them."""
        unknown = sorted(set(fields) - set(COMPUTE_PATHS["fast"]))
        if unknown:
            raise ValueError(f"not compute fields: {', '.join(unknown)}")
        self.config.validate_fields(fields)
        for name, value in fields.items():
            setattr(self.config, name, value)  # the core shares this config object
        for module in self.modules():
            if "deformable_conv_impl" in fields and hasattr(module, "deformable_impl"):
                module.deformable_impl = fields["deformable_conv_impl"]
            if "fusion_attention" in fields and hasattr(module, "attention_impl"):
                module.attention_impl = fields["fusion_attention"]
            if "trim_text_padding" in fields and hasattr(module, "trim_text_padding"):
                module.trim_text_padding = fields["trim_text_padding"]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False
    ) -> TextFeatures:
        """P̊: the text encoder's features; cacheable across images that share a prompt.
        causal: left to right, for the caption head."""
        return self.core.encode_text(input_ids, attention_mask, causal)

    def run_core(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        text_features: TextFeatures | None = None,
        region_features: list[torch.Tensor] | None = None,
        causal: bool = False,
    ) -> CoreOutput:
        """The core alone (no head): O̊, P̊, O, P. Arguments as `forward`; `region_features`: O̊ of
        an earlier call on the same images, to skip backbone and FPN; causal: the caption mode
        (see `FusionTower.forward`; given `text_features` must have been encoded causally too)."""
        _check_images(pixel_values)
        batch = pixel_values.shape[0]
        if text_features is None:
            if input_ids is None or attention_mask is None:
                raise ValueError("give input_ids and attention_mask, or text_features")
            text_features = self.encode_text(input_ids, attention_mask, causal)
        elif text_features.causal != causal:
            raise ValueError(
                f"text_features were encoded with causal={text_features.causal}, the run asks for causal={causal}"
            )
        text_features = _broadcast_text(text_features, batch)
        if image_sizes is None:
            image_sizes = torch.tensor([list(pixel_values.shape[-2:])] * batch)
        image_sizes = _check_image_sizes(image_sizes, pixel_values)
        return self.core(pixel_values, text_features, image_sizes, region_features)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        text_features: TextFeatures | None = None,
        targets: Sequence[dict[str, torch.Tensor]] | None = None,
        heads: Sequence[str] | None = None,
        region_features: list[torch.Tensor] | None = None,
        **head_options: Any,
    ) -> GLIPv2Output | dict[str, torch.Tensor]:
        """pixel_values: (B, 3, H, W) normalised BGR images (any H, W; padding at bottom/right);
        input_ids, attention_mask: (B or 1, T) tokens, or pre-computed `text_features`;
        image_sizes: (B, 2) unpadded (h, w), default the full tensor size;
        targets: one dict per image (see `glipv2.modeling.criterion`): in train mode the return
        value is the loss dict;
        heads: the heads to run (default: each head that wants to, see `TaskHead.wanted`);
        region_features: O̊ of these images from an earlier `core.encode_images` (skips backbone and
        FPN, e.g. for several questions about one image);
        head_options: per-head keyword arguments — `return_legacy_logits` (grounding),
        `return_mlm_logits` (mlm; default: in train mode), `mask_boxes` and `mask_token_weights`
        (mask: per image (N_i, 4) boxes in input pixels and (N_i, T) the tokens of each box's
        phrase; in training the ground truth is used)."""
        unknown = [h for h in heads or () if h not in self.heads]
        if unknown:
            raise ValueError(
                f"{self.config.name} has no head(s) {', '.join(unknown)}; it has {', '.join(self.heads)}"
            )
        # an option of a head this model lacks is ignored (e.g. return_mlm_logits); a typo is an error
        if head_options and (unexpected := sorted(set(head_options) - registered_head_options())):
            raise TypeError(
                f"GLIPv2.forward: unexpected argument(s) {', '.join(unexpected)} (the heads take "
                f"{', '.join(sorted(registered_head_options()))})"
            )
        if head_options.get("mask_boxes") is not None and "mask" not in self.heads:
            raise ValueError(f"{self.config.name} has no mask head (GLIPv2Config.mask_head is False)")
        inputs = HeadInputs(self.training, targets, head_options)
        selected = [
            name
            for name, head in self.heads.items()
            if ((name in heads) if heads is not None else head.wanted(inputs))
        ]
        causal = {bool(self.heads[name].causal_text) for name in selected}
        if len(causal) > 1:
            raise ValueError(
                f"heads {', '.join(selected)} cannot run together: the caption head reads a causal text "
                "stream, the others the bidirectional one"
            )
        core = self.run_core(
            pixel_values,
            input_ids,
            attention_mask,
            image_sizes,
            text_features,
            region_features=region_features,
            causal=causal == {True},
        )
        produced: dict[str, Any] = {}
        for name in selected:
            produced.update(self.heads[name](core, inputs))
        known = set(GLIPv2Output.__dataclass_fields__)
        core_fields = {k: v for k, v in vars(core).items() if k in known}
        output = GLIPv2Output(
            **core_fields
            | {k: v for k, v in produced.items() if k in known}
            | {"extra": {k: v for k, v in produced.items() if k not in known}}
        )
        if self.training and targets is not None:
            # the heads that ran, and the loss-only heads that go with them (L_inter with grounding)
            ran = selected + [
                name
                for name, head in self.heads.items()
                if name not in selected and head.loss_runs_with in selected
            ]
            return self.criterion(output, targets, ran=ran)
        return output

    @torch.no_grad()
    def generate_captions(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        *,
        bos_token_id: int,
        eos_token_id: int,
        max_length: int = 30,
        beam_size: int = 1,
        length_penalty: float = 1.0,
    ) -> list[list[int]]:
        """Caption token ids per image (without [CLS] / [SEP]): greedy for beam_size 1, else beam
        search. The image side — backbone, FPN, the tower's image stream and each block's image-side
        projections, queries and values (`FusionTower.image_stream`) — is computed once; every step
        runs only the text encoder and the tower's text stream on the tokens so far. image_sizes is
        only checked: the causal image stream reads the whole padded tensor, as in training."""
        if "caption" not in self.heads:
            raise ValueError(f"{self.config.name} has no caption head (GLIPv2Config.caption_head is False)")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        _check_images(pixel_values)
        batch = pixel_values.shape[0]
        if image_sizes is not None:
            _check_image_sizes(image_sizes, pixel_values)
        _, sides = self.core.fusion.image_stream(self.core.encode_images(pixel_values))
        if beam_size > 1:  # image i's beams are rows i·K … i·K + K − 1
            sides = [
                None if side is None else tuple(t.repeat_interleave(beam_size, dim=0) for t in side)
                for side in sides
            ]
        head = self.heads["caption"]

        def next_token(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            text = self.encode_text(ids, mask, causal=True)
            fused = self.core.fusion.text_stream(sides, self.core.prompt_offset(text.hidden), mask)
            if len(head.layers.layers):  # the head's own causal layers read the whole prefix
                return head.logits(fused, mask)[:, -1].float().log_softmax(dim=-1)
            return head.logits(fused[:, -1:])[:, 0].float().log_softmax(dim=-1)

        limit = min(max_length, self.config.max_query_len - 1)  # [CLS] takes a slot
        if beam_size == 1:
            return greedy_decode(next_token, batch, bos_token_id, eos_token_id, limit, pixel_values.device)
        return beam_search(
            next_token,
            batch,
            bos_token_id,
            eos_token_id,
            limit,
            pixel_values.device,
            beam_size=beam_size,
            length_penalty=length_penalty,
        )

    def predict_mask_logits(
        self, output: GLIPv2Output, boxes: Sequence[torch.Tensor], token_weights: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Mask logits (N_i, M, M) inside each of `boxes` (per image (N_i, 4), input pixels) for the
        phrase given by `token_weights` (per image (N_i, T)), from a finished forward's fused O and P."""
        if "mask" not in self.heads:
            raise ValueError(f"{self.config.name} has no mask head (GLIPv2Config.mask_head is False)")
        return self.heads["mask"].predict(
            output.fused_region_features, boxes, output.fused_token_features, token_weights
        )

    # --- persistence -----------------------------------------------------------------------------
    def save_pretrained(
        self, directory: str | os.PathLike[str], reference_text_weights: bool = False
    ) -> Path:
        """Write `config.json` and `model.safetensors` into `directory` (the processor saves its
        own files beside them: `GLIPv2Processor.save_pretrained`).

        reference_text_weights: leave the text encoder out of the weights file and record its
        pretrained source (`config.text_weights`, e.g. the MiniLM package) with a fingerprint
        instead — for a model trained with a frozen text encoder (the shipped tiny weights). Loading
        rebuilds it from that source and refuses a source whose weights differ."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.config.save(out / CONFIG_NAME)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        metadata = {"format": "pt", "library": "glipv2", "layout": STATE_LAYOUT}
        if reference_text_weights:
            metadata.update(self._text_weights_reference(state))
            state = {k: v for k, v in state.items() if not k.startswith(TEXT_PREFIX)}
        with atomic_path(out / WEIGHTS_NAME) as tmp:  # never leave a half-written weights file
            save_file(state, str(tmp), metadata=metadata)
        return out

    def _text_weights_reference(self, state: dict[str, torch.Tensor]) -> dict[str, str]:
        source = self.config.text_weights
        if not source:
            raise ValueError(
                "reference_text_weights needs a pretrained text encoder source (config.text_weights)"
            )
        ours = state_fingerprint({k: v for k, v in state.items() if k.startswith(TEXT_PREFIX)})
        pretrained = TextEncoder(self.config.text_encoder, source).state_dict()
        if ours != state_fingerprint({TEXT_PREFIX + k: v for k, v in pretrained.items()}):
            raise ValueError(
                f"the text encoder differs from its pretrained source {source!r} (was it trained?); "
                "save it with the weights (reference_text_weights=False)"
            )
        return {"text_weights": source, "text_weights_sha256": ours}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
        *,
        warn: bool = True,
        **config_overrides: Any,
    ) -> GLIPv2:
        """Load a folder written by `save_pretrained`, a model shipped with the package by name
        (`glipv2_tiny_shapes`; `glipv2 models` lists them), or download one from the Hugging Face
        hub; or build a preset by name (`glipv2_tiny`, ...) with random weights — as
        `glipv2.load_model` and every `--model` option accept, with the same loud warning on stderr
        unless `warn=False`. A local folder wins over a name. Folders of the layout before the
        core/heads split load too (their keys are renamed). The model is in eval mode.

        Official GLIP `.pth` checkpoints are converted by `glipv2.convert` (`glipv2.load_model(path)`
        or `glipv2.convert.from_official(...)` converts once and loads)."""
        from .registry import build_model, list_models, random_weights_warning

        name = str(name_or_path)
        if name.endswith(".pth"):
            raise ValueError(
                f"{name_or_path}: an official GLIP checkpoint; load it with glipv2.load_model(path) "
                "(or glipv2.convert.from_official), which converts it once"
            )
        shipped = shipped_model_dir(name)
        if shipped is None and name in list_models() and not Path(name).exists():
            if warn:
                print(random_weights_warning(name), file=sys.stderr)
            return build_model(name, **config_overrides)
        directory = shipped if shipped is not None else _resolve_model_dir(name, revision)
        config = GLIPv2Config.load(directory / CONFIG_NAME)
        if config_overrides:
            config = config.replace(**config_overrides)
        weights = directory / WEIGHTS_NAME
        with safe_open(str(weights), "pt") as f:
            metadata = f.metadata() or {}
        referenced = metadata.get("text_weights")
        if referenced is not None and referenced != config.text_weights:
            raise ValueError(
                f"{weights}: refers to text weights {referenced!r}, the config to {config.text_weights!r}"
            )
        model = cls(config, load_text_weights=referenced is not None)
        state = load_file(str(weights), device=str(map_location))
        legacy = metadata.get("layout", "1") == "1"
        if referenced is not None:
            # the fingerprint covers the key names of the layout the file was written in
            prefix = LEGACY_TEXT_PREFIX if legacy else TEXT_PREFIX
            text_state = model.text_encoder.state_dict()
            if state_fingerprint({prefix + k: v for k, v in text_state.items()}) != metadata.get(
                "text_weights_sha256"
            ):
                raise ValueError(
                    f"{weights}: the installed text weights {referenced!r} differ from the ones this "
                    "model was trained with"
                )
            state.update({prefix + k: v for k, v in text_state.items()})
        if legacy:
            state = upgrade_legacy_state_dict(state)
        if config_overrides:
            # a head switched off by the overrides (e.g. mlm_head=False for fine-tuning) drops its weights
            state = {
                k: v for k, v in state.items() if not k.startswith("heads.") or k.split(".")[1] in model.heads
            }
            add_fresh_heads(model, state, str(directory))
        load_state_dict_strict(model, state, source=str(weights))
        model.name_or_path = str(directory)
        return model.eval()


def add_fresh_heads(model: GLIPv2, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Heads that config overrides switched on (e.g. `vqa_answers`, `caption_head` when fine-tuning a
    GLIP checkpoint on VQA or captions) but that `state` has no weights for keep their fresh
    initialisation: their tensors are added to `state`, and a warning names them."""
    present = {k.split(".")[1] for k in state if k.startswith("heads.")}
    fresh = [name for name in model.heads if name not in present]
    if fresh:
        for key, value in model.state_dict().items():
            if key.startswith("heads.") and key.split(".")[1] in fresh:
                state[key] = value
        warnings.warn(
            f"{source}: added the {', '.join(fresh)} head(s) with fresh weights (not in the checkpoint)",
            stacklevel=3,
        )
    return fresh


LEGACY_TEXT_PREFIX = "text_encoder."
# layout 1 -> layout 2, in order (the first matching rule renames a key)
_LEGACY_RULES: list[tuple[str, str]] = [
    (r"head\.blocks\.(.+)", r"core.fusion.blocks.\1"),
    (r"head\.(.+)", r"heads.grounding.\1"),
    (r"(backbone|fpn|text_encoder)\.(.+)", r"core.\1.\2"),
    (r"prompt_embedding", r"core.prompt_embedding"),
    (r"mlm_head\.(.+)", r"heads.mlm.\1"),
    (r"region_word_contrastive\.(.+)", r"heads.inter.\1"),
    (r"mask_head\.(.+)", r"heads.mask.\1"),
]


def upgrade_legacy_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of a layout-1 state dict (flat: `backbone.*`, `head.*`, `mlm_head.*`, …)
    to the core/heads layout; keys no rule matches are kept (and reported by the strict load)."""
    out = {}
    for key, value in state.items():
        for pattern, template in _LEGACY_RULES:
            if re.fullmatch(pattern, key):
                key = re.sub(f"^{pattern}$", template, key)
                break
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------------
def load_state_dict_strict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict"
) -> None:
    """Load `state` into `model`, raising one readable `ValueError` listing every missing,
    unexpected and shape-mismatched key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: expected {tuple(own[k].shape)}, got {tuple(state[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
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
    if path.exists():
        raise ValueError(f"{name_or_path!r} is neither a model folder nor a hub id 'owner/name'")
    # `./my_modle` or `runs/x/model` is a mistyped path, not a hub id to look up
    if looks_like_path(name_or_path):
        raise MissingPath(f"{name_or_path}: no such model folder")
    if name_or_path.count("/") != 1:
        raise ValueError(f"{name_or_path!r} is neither a model folder nor a hub id 'owner/name'")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            name_or_path, revision=revision, allow_patterns=["*.json", WEIGHTS_NAME, f"{TOKENIZER_DIR}/*"]
        )
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


def _broadcast_text(features: TextFeatures, batch: int) -> TextFeatures:
    n = features.hidden.shape[0]
    if n == batch:
        return features
    if n == 1:
        return TextFeatures(
            *(t.expand(batch, *t.shape[1:]) for t in (features.hidden, features.embedded, features.mask)),
            causal=features.causal,
        )
    raise ValueError(f"{n} prompts for {batch} images: give one prompt, or one per image")


def _check_image_sizes(
    image_sizes: torch.Tensor | list[list[int]], pixel_values: torch.Tensor
) -> torch.Tensor:
    sizes = torch.as_tensor(image_sizes, dtype=torch.long)
    b, _, h, w = pixel_values.shape
    if sizes.shape != (b, 2):
        raise ValueError(f"image_sizes must be (B, 2) = ({b}, 2), got {tuple(sizes.shape)}")
    if bool((sizes < 1).any()) or bool((sizes[:, 0] > h).any()) or bool((sizes[:, 1] > w).any()):
        raise ValueError(f"image_sizes {sizes.tolist()} do not fit the padded batch of size {h}x{w}")
    return sizes
