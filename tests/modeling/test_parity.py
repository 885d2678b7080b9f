"""Numerical parity with the official GLIP code (fixture `glip_parity_tiny`).

The fixture holds a tiny GLIP-T built with the official microsoft/GLIP code, random weights, and
every intermediate of one eval forward on CPU. We convert its checkpoint, run the same input and
compare each recorded tensor at about three times the largest difference measured on this CPU
(6.7e-6, FPN P3; FIXTURE.md allows atol = rtol = 1e-4). A failure here
pinpoints the first stage that diverges: text encoder, FPN, tower, or prediction layers.

Every comparison runs on both compute paths (`GLIPv2Config`'s COMPUTE_PATHS): "reference", the
official arithmetic, matches all 256 token slots; "fast" (gather DCN, folded fusion attention, real
tokens only) matches every real slot, and its pad slots of P̊ and P are zero by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from glipv2 import GLIPv2, GLIPv2Output
from glipv2.modeling.text_encoder import TextFeatures
from glipv2.processing.text import load_tokenizer

# measured (float64 comparison, this CPU): FPN 6.7e-6, cls 3.3e-6, box 2.6e-6, tower 2.3e-6, others <= 2.1e-6
ATOL, RTOL = 2e-5, 0.0
NUM_LEVELS = 5
MAX_QUERY_LEN = 256


@dataclass
class ParityRun:
    """Our forward on the fixture input (official call: padded to 256 tokens)."""

    path: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    text: TextFeatures
    output: GLIPv2Output

    @property
    def compared_slots(self) -> int:
        """Token slots to compare: all 256 on the reference path, the real ones on the fast path."""
        return MAX_QUERY_LEN if self.path == "reference" else int(self.attention_mask.sum())


@pytest.fixture(scope="module", params=["reference", "fast"])
def parity_run(
    request: pytest.FixtureRequest, fixture_model: GLIPv2, fixture_outputs: dict[str, Any]
) -> ParityRun:
    tokenizer = load_tokenizer(fixture_model.config.tokenizer)
    tokens = tokenizer(
        fixture_outputs["caption"], padding="max_length", max_length=MAX_QUERY_LEN, return_tensors="pt"
    )
    fixture_model.set_compute_path(request.param)
    try:
        with torch.no_grad():
            text = fixture_model.encode_text(tokens["input_ids"], tokens["attention_mask"])
            output = fixture_model(
                fixture_outputs["image_tensor"],
                tokens["input_ids"],
                tokens["attention_mask"],
                return_legacy_logits=True,
            )
    finally:
        fixture_model.set_compute_path("fast")  # the default, which the other tests expect
    return ParityRun(request.param, tokens["input_ids"], tokens["attention_mask"], text, output)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape, f"shape {tuple(ours.shape)} != official {tuple(theirs.shape)}"
    torch.testing.assert_close(ours.float(), theirs.float(), atol=ATOL, rtol=RTOL)


def assert_tokens_close(run: ParityRun, ours: torch.Tensor, theirs: torch.Tensor, pads_zero: bool) -> None:
    """(B, ..., T) tensors with the token slots last: the compared slots match; on the fast path
    the rest are zero when `pads_zero` (P̊ and P; the logits of pad slots are not defined there)."""
    assert ours.shape == theirs.shape, f"shape {tuple(ours.shape)} != official {tuple(theirs.shape)}"
    n = run.compared_slots
    assert_close(ours[..., :n], theirs[..., :n])
    if pads_zero and n < ours.shape[-1]:
        assert bool((ours[..., n:] == 0).all())


# --- checkpoint conversion ----------------------------------------------------------------------
def test_conversion_report_is_clean(fixture_conversion: Any) -> None:
    """Every official tensor is either converted or a derived buffer equal to ours; none is
    unmapped, shape-mismatched or silently ignored (the fixture has no pooler/position_ids)."""
    report = fixture_conversion.report
    assert report.unmapped == []
    assert report.mismatched == []
    assert report.problems() == []
    assert report.ignored == []
    # 8 Swin relative_position_index buffers + 5 cell anchors are recomputed, not copied
    assert len(report.derived) == 8 + 5
    assert all("relative_position_index" in k or "cell_anchors" in k for k in report.derived)
    assert len(report.converted) + len(report.derived) == len(fixture_conversion.official_keys) == 313


def test_conversion_fills_every_model_tensor(fixture_model: GLIPv2, fixture_conversion: Any) -> None:
    """The converted dict provides exactly our state dict: nothing left at random init."""
    ours = fixture_model.state_dict()
    assert set(fixture_conversion.state_dict) == set(ours)
    for key, tensor in fixture_conversion.state_dict.items():
        assert tensor.shape == ours[key].shape, key
        assert torch.equal(tensor, ours[key]), key


# --- text side -----------------------------------------------------------------------------------
def test_tokenization_matches_fixture(
    fixture_model: GLIPv2, fixture_outputs: dict[str, Any], parity_run: ParityRun
) -> None:
    """Our tokenizer reproduces the official ids, and padding to 256 gives the official mask."""
    tokenizer = load_tokenizer(fixture_model.config.tokenizer)
    unpadded = tokenizer(fixture_outputs["caption"], return_tensors="pt")["input_ids"][0]
    assert unpadded.tolist() == fixture_outputs["input_ids"].tolist()
    assert parity_run.input_ids.shape == (1, MAX_QUERY_LEN)
    assert torch.equal(parity_run.input_ids[0, : len(unpadded)], unpadded)
    assert bool((parity_run.input_ids[0, len(unpadded) :] == 0).all())
    assert parity_run.attention_mask.tolist() == fixture_outputs["lang_masks"].tolist()


def test_lang_hidden(parity_run: ParityRun, fixture_outputs: dict[str, Any]) -> None:
    """BERT's last layer over all 256 slots (pads included) = our `token_features`."""
    official = fixture_outputs["lang_hidden"].transpose(1, 2)  # token slots last
    for ours in (parity_run.output.token_features, parity_run.text.hidden):
        assert_tokens_close(parity_run, ours.transpose(1, 2), official, pads_zero=True)


def test_lang_embedded(parity_run: ParityRun, fixture_outputs: dict[str, Any]) -> None:
    """The masked copy (pads zeroed) = our TextEncoder's `embedded`."""
    assert_close(parity_run.text.embedded, fixture_outputs["lang_embedded"])
    n_real = int(fixture_outputs["lang_masks"].sum())
    assert bool((parity_run.text.embedded[0, n_real:] == 0).all())


def test_tower_lang_hidden(parity_run: ParityRun, fixture_outputs: dict[str, Any]) -> None:
    """Text features after the fusion tower (the dot product's text side) = `fused_token_features`."""
    assert_tokens_close(
        parity_run,
        parity_run.output.fused_token_features.transpose(1, 2),
        fixture_outputs["tower_lang_hidden"].transpose(1, 2),
        pads_zero=True,
    )


# --- per-level outputs ---------------------------------------------------------------------------
# (official key in outputs.pt, attribute of GLIPv2Output)
PER_LEVEL = [
    ("fpn_features", "region_features"),
    ("tower_visual", "fused_region_features"),
    ("dot_product_logits", "logits"),
    ("box_regression", "box_regression"),
    ("centerness", "centerness"),
    ("anchors", "anchors"),
    ("cls_logits_unused", "legacy_cls_logits"),
]


def test_level_counts(parity_run: ParityRun, fixture_outputs: dict[str, Any]) -> None:
    for official, ours in PER_LEVEL:
        assert len(fixture_outputs[official]) == NUM_LEVELS
        assert len(getattr(parity_run.output, ours)) == NUM_LEVELS, ours


@pytest.mark.parametrize("level", range(NUM_LEVELS), ids=[f"P{i + 3}" for i in range(NUM_LEVELS)])
@pytest.mark.parametrize(("official", "ours"), PER_LEVEL, ids=[o for o, _ in PER_LEVEL])
def test_per_level_parity(
    parity_run: ParityRun, fixture_outputs: dict[str, Any], official: str, ours: str, level: int
) -> None:
    """FPN P3..P7, tower output, region-token logits (all 256 slots), box deltas after the
    per-level Scale, centerness, anchors and the unused classic classifier, level by level."""
    if ours == "logits":
        assert_tokens_close(
            parity_run, parity_run.output.logits[level], fixture_outputs[official][level], pads_zero=False
        )
    else:
        assert_close(getattr(parity_run.output, ours)[level], fixture_outputs[official][level])


def test_fpn_level_sizes(parity_run: ParityRun) -> None:
    """256x256 input: P3..P7 are 32, 16, 8, 4, 2 wide, and the logits cover all 256 token slots."""
    sizes = [tuple(f.shape[-2:]) for f in parity_run.output.region_features]
    assert sizes == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert [tuple(s.shape) for s in parity_run.output.logits] == [(1, h * w, MAX_QUERY_LEN) for h, w in sizes]
    assert parity_run.output.image_sizes.tolist() == [[256, 256]]
