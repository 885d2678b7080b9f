"""The DDP helpers, without a process group and in a real 2-process gloo group: all-gather with
the gradient of the local slice only, variable-length gather, mean all-reduce; and L_inter on
2 ranks x 1 image equal to 1 process x 2 images (loss and DDP-averaged gradients)."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY_BERT, make_tiny_config

from glipv2 import GLIPv2Output
from glipv2.modeling.anchors import AnchorGenerator
from glipv2.modeling.criterion import GLIPv2Criterion
from glipv2.modeling.heads import LossConfig, TaskHead, build_heads
from glipv2.utils.distributed import (
    all_gather_sizes,
    all_gather_varlen,
    all_gather_with_grad,
    all_reduce_mean,
    get_rank,
    get_world_size,
    scale_gradient,
    select_device,
)

WORLD = 2
SIZES = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # a 64x64 input
CHANNELS, TEXT_DIM, TOKENS, PROJ_DIM = 8, 12, 6, 16


def make_heads() -> dict[str, TaskHead]:
    """The heads of a tiny model whose O̊ / P̊ widths are CHANNELS / TEXT_DIM, with an L_inter
    projection to PROJ_DIM (the criterion needs the grounding head beside it: ATSS on its anchors)."""
    text = {**TINY_BERT, "hidden_size": TEXT_DIM, "num_attention_heads": 2, "intermediate_size": 2 * TEXT_DIM}
    return build_heads(
        make_tiny_config(fpn_channels=CHANNELS, text_encoder=text, region_word_contrastive_dim=PROJ_DIM)
    )


def make_data(seed: int = 0) -> dict[str, Any]:
    """Two images' worth of O̊ / P̊ / dense outputs, their targets and projection weights. Image 0
    has two boxes and image 1 one, so the ranks gather different numbers of regions and tokens."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    return {
        "logits": [torch.randn(2, h * w, TOKENS, generator=g) for h, w in SIZES],
        "box_regression": [torch.randn(2, 4, h, w, generator=g) for h, w in SIZES],
        "centerness": [torch.randn(2, 1, h, w, generator=g) for h, w in SIZES],
        "region_features": [torch.randn(2, CHANNELS, h, w, generator=g) for h, w in SIZES],
        "token_features": torch.randn(2, TOKENS, TEXT_DIM, generator=g),
        "mask": mask,
        "targets": [
            {
                "boxes": torch.tensor([[4.0, 6.0, 40.0, 44.0], [30.0, 20.0, 62.0, 60.0]]),
                "positive_map": torch.tensor([[0.0, 1, 0, 0, 0, 0], [0.0, 0, 1, 1, 0, 0]]),
                "labels": torch.tensor([1, 2]),
                "token_labels": torch.tensor([-1, 1, 2, 2, -1, -1]),
            },
            {
                "boxes": torch.tensor([[10.0, 12.0, 50.0, 40.0]]),
                "positive_map": torch.tensor([[0.0, 0, 1, 0, 0, 0]]),
                "labels": torch.tensor([2]),
                "token_labels": torch.tensor([-1, 1, 2, -1, -1, -1]),
            },
        ],
        "projection": make_heads()["inter"].state_dict(),
    }


def make_output(data: dict[str, Any], images: slice) -> GLIPv2Output:
    """The GLIPv2Output of some images of `data`; O̊ and P̊ are fresh leaves (to read gradients)."""

    def leaf(t: torch.Tensor) -> torch.Tensor:
        return t[images].clone().requires_grad_()

    mask = data["mask"][images]
    return GLIPv2Output(
        logits=[leaf(t) for t in data["logits"]],
        box_regression=[leaf(t) for t in data["box_regression"]],
        centerness=[leaf(t) for t in data["centerness"]],
        anchors=AnchorGenerator((64, 128, 256, 512, 1024), (8, 16, 32, 64, 128))(SIZES),
        region_features=[leaf(t) for t in data["region_features"]],
        token_features=leaf(data["token_features"]),
        fused_region_features=[],
        fused_token_features=torch.zeros(0),
        token_embeddings=torch.zeros(0),
        text_attention_mask=mask,
        image_sizes=torch.tensor([[64, 64]] * mask.shape[0]),
    )


def inter_loss(data: dict[str, Any], images: slice) -> dict[str, Any]:
    """L_inter of `images` (in this process); the loss, projection gradients and O̊ / P̊ gradients."""
    heads = make_heads()
    projection = heads["inter"]
    projection.load_state_dict(data["projection"])
    criterion = GLIPv2Criterion(LossConfig(use_loc=False, use_intra=False, use_inter=True), heads)
    output = make_output(data, images)
    losses = criterion(output, data["targets"][images])
    losses["loss"].backward()
    return {
        "loss": losses["loss_inter"].detach(),
        "grads": {k: p.grad.clone() for k, p in projection.named_parameters()},
        "region_grads": [f.grad for f in output.region_features],
        "token_grad": output.token_features.grad,
    }


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/store",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        out: dict[str, Any] = {"world": get_world_size(), "rank": get_rank()}
        # all_gather_with_grad: the global tensor; gradient to the local slice only
        x = (torch.arange(6.0).reshape(2, 3) + 10 * rank).requires_grad_()
        gathered = all_gather_with_grad(x)
        weights = torch.arange(1.0, 13.0).reshape(4, 3)
        (gathered * weights).sum().backward()
        out["gathered"], out["grad"] = gathered.detach(), x.grad
        # variable lengths: rank r contributes 2r + 1 rows
        v = torch.full((2 * rank + 1, 2), float(rank), requires_grad=True)
        varlen, sizes = all_gather_varlen(v)
        (varlen * torch.arange(1.0, varlen.shape[0] + 1)[:, None]).sum().backward()
        out["varlen"], out["sizes"], out["varlen_grad"] = varlen.detach(), sizes, v.grad
        out["all_sizes"] = all_gather_sizes(7 + rank)
        out["mean"] = all_reduce_mean(rank + 1.0)
        # scale_gradient: identity forward, scaled backward
        s = torch.ones(3, requires_grad=True)
        scale_gradient(s, 3.0).sum().backward()
        out["scaled"] = s.grad

        # L_inter, one image per rank; gradients averaged as DDP does
        result = inter_loss(torch.load(Path(folder) / "data.pt", weights_only=False), slice(rank, rank + 1))
        for grad in result["grads"].values():
            dist.all_reduce(grad)
            grad /= world
        out.update(result)
        torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_helpers_without_a_process_group() -> None:
    assert get_world_size() == 1 and get_rank() == 0
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x
    out, sizes = all_gather_varlen(x)
    assert out is x and sizes == [3]
    assert all_gather_sizes(5) == [5]
    assert all_reduce_mean(4.0).item() == 4.0
    assert all_reduce_mean(torch.tensor([2.5], requires_grad=True)).requires_grad is False
    assert scale_gradient(x, 1) is x


def test_select_device_gives_a_bare_cuda_this_ranks_index(monkeypatch: pytest.MonkeyPatch) -> None:
    # `torch.cuda.set_device` rejects an index-less "cuda", so `--device cuda` once crashed training.
    # The allocation probe is stubbed out: this test needs no GPU.
    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: None)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert select_device("cuda") == torch.device("cuda", 1)
    assert select_device("cuda:0") == torch.device("cuda", 0)
    assert select_device("cpu") == torch.device("cpu")


def test_select_device_rejects_an_unknown_device() -> None:
    with pytest.raises(ValueError, match="device nonsense"):
        select_device("nonsense")


def test_two_process_gloo_group(tmp_path: Path) -> None:
    data = make_data()
    torch.save(data, tmp_path / "data.pt")
    # fork where the platform has it: the children inherit the imported modules instead of paying
    # the ~10 s import of torch + transformers each (spawn elsewhere)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(
        _worker, args=(WORLD, str(tmp_path)), nprocs=WORLD, join=False, start_method=method
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):  # raises when a worker fails
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process group did not finish within 120 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    weights = torch.arange(1.0, 13.0).reshape(4, 3)
    expected = torch.cat([torch.arange(6.0).reshape(2, 3), torch.arange(6.0).reshape(2, 3) + 10])
    for r, out in enumerate(ranks):
        assert (out["world"], out["rank"]) == (WORLD, r)
        torch.testing.assert_close(out["gathered"], expected)
        torch.testing.assert_close(out["grad"], weights[2 * r : 2 * r + 2])  # only its own rows' weights
        torch.testing.assert_close(out["varlen"], torch.tensor([[0.0, 0.0]] + [[1.0, 1.0]] * 3))
        assert out["sizes"] == [1, 3] and out["all_sizes"] == [7, 8]
        rows = torch.arange(1.0, 5.0)[slice(0, 1) if r == 0 else slice(1, 4)]
        torch.testing.assert_close(out["varlen_grad"], rows[:, None].expand(-1, 2))
        assert out["mean"].item() == 1.5
        torch.testing.assert_close(out["scaled"], torch.full((3,), 3.0))

    # L_inter: 2 ranks x 1 image == 1 process x 2 images
    reference = inter_loss(data, slice(0, 2))
    assert reference["loss"].item() > 0
    for r, out in enumerate(ranks):
        torch.testing.assert_close(out["loss"], reference["loss"], rtol=1e-5, atol=1e-6)
        for name, grad in reference["grads"].items():
            assert grad.abs().sum() > 0, name
            torch.testing.assert_close(out["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
        # O̊ / P̊ (the backbone and text-encoder side): this rank's gradient, averaged over the
        # ranks as DDP does for the parameters upstream, is the single-process gradient
        for got, want in zip(out["region_grads"], reference["region_grads"]):
            torch.testing.assert_close(got / WORLD, want[r : r + 1], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(
            out["token_grad"] / WORLD, reference["token_grad"][r : r + 1], rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize("images", [slice(0, 1), slice(1, 2)])
def test_single_image_losses_differ_from_the_global_batch(images: slice) -> None:
    """Sanity check of the test above: the global batch matters (cross-image positives and
    negatives), so equality there is not a coincidence."""
    data = make_data()
    assert inter_loss(data, images)["loss"].item() != pytest.approx(
        inter_loss(data, slice(0, 2))["loss"].item()
    )
