"""The understanding heads: VQA on the fused [CLS], captioning on a causal text stream.

The causal test changes token t+1 and checks that nothing at <= t moves, through the whole stack
(text encoder, fusion tower, caption head); the decoding tests check beam size 1 against greedy and
that the cached image side gives the same tokens as running the whole model on each prefix."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from glipv2 import GLIPv2
from glipv2.modeling.heads import IGNORE_INDEX, beam_search, greedy_decode, next_token_labels

ANSWERS = ("yes", "no", "2", "red")


@pytest.fixture(params=[0, 1], ids=["heads_on_P", "heads_with_own_layers"])
def model(tiny_config: Any, request: pytest.FixtureRequest) -> GLIPv2:
    """With and without head-owned BERT layers (and a gradient share into the core)."""
    torch.manual_seed(0)
    config = tiny_config(
        pad_to_max_query_len=False,
        vqa_answers=ANSWERS,
        caption_head=True,
        mask_head=True,
        understanding_head_layers=request.param,
        understanding_core_gradient_scale=0.1 if request.param else 1.0,
    )
    return GLIPv2(config).eval()


def _inputs(length: int = 9, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, 3, 64, 96, generator=g)
    ids = torch.randint(1000, 2000, (batch, length), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, length - 2 :] = 0  # the second caption is shorter: pads must not matter either
    return pixels, ids, mask


def test_changing_token_t_plus_1_leaves_everything_at_t_and_before_unchanged(model: GLIPv2) -> None:
    pixels, ids, mask = _inputs()
    out = model(pixels, ids, mask, heads=["caption"])
    for t in range(ids.shape[1] - 1):
        changed = ids.clone()
        changed[:, t + 1] = 1234 if int(ids[0, t + 1]) != 1234 else 1235
        other = model(pixels, changed, mask, heads=["caption"])
        torch.testing.assert_close(other.caption_logits[:, : t + 1], out.caption_logits[:, : t + 1])
        torch.testing.assert_close(
            other.fused_token_features[:, : t + 1], out.fused_token_features[:, : t + 1]
        )
        # the image stream reads no caption token at all
        for a, b in zip(other.fused_region_features, out.fused_region_features):
            torch.testing.assert_close(a, b)
        # and the change does reach the later slots (the test can fail)
        assert not torch.allclose(other.caption_logits[0, t + 1 :], out.caption_logits[0, t + 1 :])


def test_the_bidirectional_stream_does_see_later_tokens(model: GLIPv2) -> None:
    """The same check without the causal mode fails: the test above measures the mask."""
    pixels, ids, mask = _inputs()
    out = model(pixels, ids, mask, heads=["vqa"])
    changed = ids.clone()
    changed[:, 5] = 1999
    other = model(pixels, changed, mask, heads=["vqa"])
    assert not torch.allclose(other.fused_token_features[:, :5], out.fused_token_features[:, :5])
    assert not torch.allclose(other.vqa_logits, out.vqa_logits)


def test_vqa_logits_and_loss(model: GLIPv2) -> None:
    pixels, ids, mask = _inputs()
    out = model(pixels, ids, mask, heads=["vqa"])
    assert out.vqa_logits.shape == (2, len(ANSWERS))
    assert out.logits is None  # the grounding head did not run
    model.train()
    scores = [torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1 / 3, 1.0])]
    torch.manual_seed(5)  # the same dropout in both train-mode calls
    out = model(pixels, ids, mask, heads=["vqa"])
    torch.manual_seed(5)
    losses = model(pixels, ids, mask, targets=[{"vqa_scores": s} for s in scores], heads=["vqa"])
    assert set(losses) == {"loss_vqa", "loss"}
    losses["loss"].backward()
    head = model.heads["vqa"]
    assert all(p.grad is not None for p in head.parameters())
    assert all(p.grad is None for p in model.heads["grounding"].parameters())
    # hand check: the sum over answers of BCE, averaged over the two questions
    expected = (
        torch.nn.functional.binary_cross_entropy_with_logits(
            out.vqa_logits, torch.stack(scores), reduction="sum"
        )
        / 2
    )
    model.eval()
    torch.testing.assert_close(losses["loss_vqa"].detach(), expected.detach(), rtol=1e-4, atol=1e-5)


def test_caption_loss_is_label_smoothed_next_token_cross_entropy(model: GLIPv2) -> None:
    pixels, ids, mask = _inputs()
    labels = next_token_labels(ids, mask)
    assert labels[0, :-1].tolist() == ids[0, 1:].tolist() and int(labels[0, -1]) == IGNORE_INDEX
    assert labels[1, -3:].tolist() == [IGNORE_INDEX] * 3  # the last real slot and the two pads
    model.train()
    torch.manual_seed(5)
    out = model(pixels, ids, mask, heads=["caption"])
    torch.manual_seed(5)
    losses = model(pixels, ids, mask, targets=[{"caption_labels": row} for row in labels], heads=["caption"])
    model.eval()
    expected = torch.nn.functional.cross_entropy(
        out.caption_logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, label_smoothing=0.1
    )
    torch.testing.assert_close(losses["loss_caption"].detach(), expected, rtol=1e-4, atol=1e-5)


def test_caption_head_output_is_tied_to_the_word_embeddings(model: GLIPv2) -> None:
    head = model.heads["caption"]
    assert not any(p is model.text_encoder.word_embeddings.weight for p in head.parameters())
    assert not any(k.startswith("heads.caption.") and "word_embeddings" in k for k in model.state_dict())
    with torch.no_grad():
        model.text_encoder.word_embeddings.weight[7].fill_(3.0)
    feats = torch.randn(2, 3, model.config.text_hidden_size)
    hidden = head.layers(feats, torch.ones(2, 3, dtype=torch.long))
    expected = head.transform(hidden) @ model.text_encoder.word_embeddings.weight[7] + head.bias[7]
    torch.testing.assert_close(head.logits(feats)[..., 7], expected)


def test_caption_and_localisation_heads_cannot_share_a_forward(model: GLIPv2) -> None:
    pixels, ids, mask = _inputs()
    with pytest.raises(ValueError, match="cannot run together"):
        model(pixels, ids, mask, heads=["grounding", "caption"])


def test_cached_image_side_decoding_equals_full_forward_decoding(model: GLIPv2) -> None:
    """Greedy decoding through `generate_captions` (image side computed once) gives the tokens that
    re-running the whole model on each prefix gives."""
    pixels, _, _ = _inputs()
    # make the head prefer a few tokens, so that the decoded sequences are not all one token
    torch.manual_seed(3)
    with torch.no_grad():
        model.heads["caption"].bias.normal_(0, 2.0)
    cached = model.generate_captions(pixels, bos_token_id=101, eos_token_id=102, max_length=6)

    def full(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(pixels, ids, mask, heads=["caption"]).caption_logits[:, -1].log_softmax(-1)

    reference = greedy_decode(full, 2, 101, 102, 6, pixels.device)
    assert cached == reference
    assert all(len(c) == 6 for c in cached)


def test_beam_size_one_is_greedy_and_beams_find_better_sequences(model: GLIPv2) -> None:
    pixels, _, _ = _inputs()
    greedy = model.generate_captions(pixels, bos_token_id=101, eos_token_id=102, max_length=5)
    beam1 = model.generate_captions(pixels, bos_token_id=101, eos_token_id=102, max_length=5, beam_size=1)
    assert beam1 == greedy
    # beam_search itself with K = 1 (not the greedy shortcut of generate_captions)
    vocab = 6
    g = torch.Generator().manual_seed(0)
    table = torch.randn(vocab, vocab, generator=g).log_softmax(-1)  # a toy bigram model

    def bigram(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return table[ids[:, -1]]

    for bos in range(vocab):
        assert beam_search(bigram, 1, bos, 5, 7, torch.device("cpu"), beam_size=1) == greedy_decode(
            bigram, 1, bos, 5, 7, torch.device("cpu")
        )


def test_beam_search_finds_the_best_sequence_of_a_toy_model() -> None:
    """A case where greedy is wrong: token 1 first is likely, but every continuation after it is
    poor; beam 2 finds the sequence 2, eos of higher total probability."""
    log = torch.log

    def model(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in ids.tolist():
            last = row[-1]
            if last == 0:  # bos
                p = torch.tensor([0.0, 0.6, 0.4, 0.0])
            elif last == 1:
                p = torch.tensor([0.0, 0.0, 0.45, 0.55])  # eos (3) at 0.55
            else:
                p = torch.tensor([0.0, 0.0, 0.0, 1.0])
            rows.append(log(p.clamp(min=1e-9)))
        return torch.stack(rows)

    cpu = torch.device("cpu")
    assert greedy_decode(model, 1, 0, 3, 4, cpu) == [[1]]  # 0.6 · 0.55 = 0.33
    assert beam_search(model, 1, 0, 3, 4, cpu, beam_size=2, length_penalty=0.0) == [[2]]  # 0.4 · 1.0


def test_the_gradient_share_into_the_core(tiny_config: Any) -> None:
    """understanding_core_gradient_scale scales what the VQA loss sends into the core, not the head's."""
    grads = {}
    for scale in (1.0, 0.1):
        torch.manual_seed(0)
        config = tiny_config(
            pad_to_max_query_len=False, vqa_answers=ANSWERS, understanding_core_gradient_scale=scale
        )
        model = GLIPv2(config).train()
        pixels, ids, mask = _inputs()
        torch.manual_seed(5)
        losses = model(pixels, ids, mask, targets=[{"vqa_scores": torch.ones(4)}] * 2, heads=["vqa"])
        losses["loss"].backward()
        core = model.core.fusion.blocks[-1].text_layer.layer.output.dense.weight.grad
        grads[scale] = (core.clone(), model.heads["vqa"].classifier[0].weight.grad.clone())
    torch.testing.assert_close(grads[0.1][0], 0.1 * grads[1.0][0], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(grads[0.1][1], grads[1.0][1])
