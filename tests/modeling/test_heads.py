"""A new task is one head file plus one registry line: a toy head, registered here, is built, runs
on the core's fused O and P, puts its output in `GLIPv2Output.extra`, and its loss is summed into
the objective and trains its parameters — with no change anywhere else."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from glipv2 import GLIPv2
from glipv2.modeling import CoreOutput, GLIPv2Output, TaskHead, register_head
from glipv2.modeling.heads import HeadInputs, LossContext, unregister_head


class ImageTextMatchHead(TaskHead):
    """Toy head: one logit per image from the mean of the fused O (P3) and of the real tokens of P."""

    name = "toy_match"

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.region = nn.Linear(config.head_channels, 8)
        self.token = nn.Linear(config.text_hidden_size, 8)

    def forward(self, core: CoreOutput, inputs: HeadInputs) -> dict[str, Any]:
        regions = core.fused_region_features[0].mean(dim=(2, 3))  # (B, C)
        mask = core.text_attention_mask.unsqueeze(-1).to(core.fused_token_features.dtype)
        tokens = (core.fused_token_features * mask).sum(1) / mask.sum(1)  # (B, D)
        return {"match_logits": (self.region(regions) * self.token(tokens)).sum(-1)}

    def prepare_target(
        self,
        target: dict[str, Any],
        prepared: dict[str, torch.Tensor],
        num_tokens: int,
        config: Any,
        index: int,
    ) -> None:
        prepared["match"] = torch.as_tensor(target["match"], device=prepared["boxes"].device)

    def loss(self, output: GLIPv2Output, targets: Any, context: LossContext) -> dict[str, torch.Tensor]:
        wanted = torch.stack([t["match"] for t in targets]).float()
        logits = output.extra["match_logits"]
        return {"loss_match": nn.functional.binary_cross_entropy_with_logits(logits, wanted)}


@pytest.fixture
def toy_head() -> Iterator[None]:
    register_head("toy_match", ImageTextMatchHead, lambda config: config.name == "toy")
    yield
    unregister_head("toy_match")


def test_a_registered_head_is_built_run_and_trained(toy_head: None, tiny_config: Any) -> None:
    torch.manual_seed(0)
    model = GLIPv2(tiny_config(pad_to_max_query_len=False).replace(name="toy"))
    assert list(model.heads) == ["grounding", "toy_match"]
    assert all(k.startswith(("core.", "heads.")) for k in model.state_dict())
    pixels = torch.randn(2, 3, 64, 64)
    ids = torch.tensor([[101, 2417, 4418, 102], [101, 2630, 2675, 102]])
    mask = torch.ones_like(ids)
    output = model.eval()(pixels, ids, mask)
    assert output.extra["match_logits"].shape == (2,)

    model.train()
    targets = [
        {
            "boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]),
            "positive_map": torch.tensor([[0, 1, 1, 0]]),
            "match": torch.tensor(m),
        }
        for m in (1, 0)
    ]
    losses = model(pixels, ids, mask, targets=targets)
    assert {"loss_giou", "loss_centerness", "loss_intra", "loss_match"} <= set(losses)
    others = sum(v for k, v in losses.items() if k.startswith("loss_") and k != "loss_match")
    torch.testing.assert_close(losses["loss"], others + losses["loss_match"])
    losses["loss"].backward()
    assert model.heads["toy_match"].region.weight.grad.abs().sum() > 0


def test_other_configs_do_not_get_the_head(toy_head: None, tiny_config: Any) -> None:
    assert "toy_match" not in GLIPv2(tiny_config()).heads


def test_the_core_runs_without_any_head(tiny_config: Any) -> None:
    """A caption decoding step reads only O and P: the core alone, no dense box prediction."""
    model = GLIPv2(tiny_config(pad_to_max_query_len=False)).eval()
    calls: list[str] = []
    model.heads["grounding"].register_forward_hook(lambda *_: calls.append("grounding"))
    ids = torch.tensor([[101, 2417, 102]])
    core = model.run_core(torch.randn(1, 3, 64, 64), ids, torch.ones_like(ids))
    assert calls == []
    assert core.fused_token_features.shape == (1, 3, model.config.text_hidden_size)
    again = model.run_core(
        torch.zeros(1, 3, 64, 64), ids, torch.ones_like(ids), region_features=core.region_features
    )
    torch.testing.assert_close(again.fused_token_features, core.fused_token_features)


def test_a_mistyped_head_option_is_an_error(tiny_config: Any) -> None:
    model = GLIPv2(tiny_config(pad_to_max_query_len=False)).eval()
    ids = torch.tensor([[101, 2417, 102]])
    with pytest.raises(TypeError, match="return_mlm_logit"):
        model(torch.randn(1, 3, 64, 64), ids, torch.ones_like(ids), return_mlm_logit=True)
