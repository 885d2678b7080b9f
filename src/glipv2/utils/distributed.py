"""Small `torch.distributed` helpers for the training losses.

Every helper is a no-op (or the single-process answer) when no process group is initialised, so
the criterion runs unchanged on one CPU or under DDP. Collectives must be entered by every rank in
the same order: callers only branch on *global* quantities (sizes returned by these helpers).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def select_device(name: str | None = None) -> torch.device:
    """`name` if given (ValueError when this machine has no such device), else this rank's GPU
    (`cuda:LOCAL_RANK`) when there is one, else the CPU. A bare "cuda" also means this rank's GPU:
    `torch.cuda.set_device` (in `init_from_env`) needs an index."""
    local_gpu = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name:
        try:
            device = torch.device(name)
            if device.type == "cuda" and device.index is None:
                device = local_gpu
            torch.empty(0, device=device)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"device {name}: {str(err).splitlines()[0]}") from None
        return device
    return local_gpu if torch.cuda.is_available() else torch.device("cpu")


def init_from_env(device: torch.device) -> None:
    """Join the process group `torchrun` describes (WORLD_SIZE > 1): NCCL on GPU, gloo on CPU."""
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before NCCL init, so each rank's collectives use its own GPU
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def is_initialized() -> bool:
    """True when a default process group exists (DDP / torchrun)."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of ranks of the default group; 1 without one."""
    return dist.get_world_size() if is_initialized() else 1


def get_rank() -> int:
    """This process's rank in the default group; 0 without one."""
    return dist.get_rank() if is_initialized() else 0


def all_reduce_mean(value: float | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Mean over ranks of a scalar, as a detached 0-d float tensor (e.g. the number of positive
    anchors, official `reduce_sum(...) / num_gpus`). `device`: where to put a Python number (use
    the CUDA device under NCCL); a tensor keeps its own."""
    if isinstance(value, torch.Tensor):
        out = value.detach().reshape(()).to(torch.float32).clone()
    else:
        out = torch.tensor(float(value), dtype=torch.float32, device=device)
    if get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= get_world_size()
    return out


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(n, ...) on every rank -> (world·n, ...) concatenated in rank order.

    The slice of this rank is `tensor` itself, so autograd flows back into it; the slices of the
    other ranks are constants here (their owners back-propagate through their own copy). The
    shapes must agree on all ranks; see `all_gather_varlen` when the first dimension differs."""
    world = get_world_size()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[get_rank()] = tensor
    return torch.cat(parts, dim=0)


def all_gather_sizes(size: int, device: torch.device | str | None = None) -> list[int]:
    """The integer `size` of every rank, in rank order (a tiny collective)."""
    if get_world_size() == 1:
        return [int(size)]
    gathered = all_gather_with_grad(torch.tensor([int(size)], dtype=torch.long, device=device))
    return [int(s) for s in gathered.tolist()]


def all_gather_varlen(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """(n_rank, ...) with a first dimension that may differ between ranks -> (Σ n_rank, ...) in rank
    order, plus the list of n_rank. Same gradient rule as `all_gather_with_grad` (local slice only).

    The rows are padded to the largest n before the collective (all_gather needs equal shapes) and
    the padding is dropped afterwards; the trailing dimensions must agree on all ranks."""
    world = get_world_size()
    if world == 1:
        return tensor, [tensor.shape[0]]
    sizes = all_gather_sizes(tensor.shape[0], tensor.device)
    longest = max(sizes)
    if longest == 0:  # nothing anywhere: every rank skips the collective alike
        return tensor, sizes
    pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
    padded = all_gather_with_grad(torch.cat([tensor, pad], dim=0)).split(longest, dim=0)
    rank = get_rank()
    # the local slice is taken from `tensor` itself (not the padded copy) so its graph is direct
    parts = [tensor if r == rank else chunk[:n] for r, (chunk, n) in enumerate(zip(padded, sizes))]
    return torch.cat(parts, dim=0), sizes


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by `scale` in the backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None  # type: ignore[attr-defined]


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` unchanged, but its gradient multiplied by `scale` (bit-exact forward; no-op for 1)."""
    if scale == 1:
        return x
    return _ScaleGradient.apply(x, scale)
