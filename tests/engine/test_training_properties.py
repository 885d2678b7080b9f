"""Training properties of the core + heads structure: gradient accumulation, data-loader workers,
prompt tuning, and exact resume of a SIGKILLed 2-process gloo run under DistributedDataParallel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from glipv2.data.collate import GroundingCollator
from glipv2.data.mlm import MaskingVocab

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import REPO, make_dataset, make_trainer, tiny_model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_gradient_accumulation_equals_the_large_batch(tiny_config: Any, tmp_path: Path) -> None:
    """Batch 2 in one pass == 2 micro-batches of 1. The same image twice, so that each micro-batch's
    normaliser (its positive anchors) is half the large batch's and the two objectives are one; L_inter,
    which contrasts across the images of a batch, is off."""
    losses = {"use_inter": False}
    large = make_trainer(
        tiny_model(tiny_config, no_dropout=True),
        tmp_path / "data",
        tmp_path / "a",
        batch_size=2,
        losses=losses,
        flip_probability=0.0,
    )
    accumulated = make_trainer(
        tiny_model(tiny_config, no_dropout=True),
        tmp_path / "data",
        tmp_path / "b",
        batch_size=1,
        grad_accumulation=2,
        losses=losses,
        flip_probability=0.0,
    )
    assert all(
        torch.equal(a, b) for a, b in zip(_state(large.model).values(), _state(accumulated.model).values())
    )
    sample = large.dataset[0]
    one = large.train_step([large.collator([sample, sample])])
    two = accumulated.train_step([accumulated.collator([sample]), accumulated.collator([sample])])
    assert one is not None and two is not None
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    before = _state(tiny_model(tiny_config, no_dropout=True))
    changed = 0
    for key, value in _state(large.model).items():
        torch.testing.assert_close(_state(accumulated.model)[key], value, atol=1e-6, rtol=1e-5, msg=key)
        changed += not torch.equal(value, before[key])
    assert changed > 10  # the step did move the weights


def test_data_loader_workers_give_the_same_batches(tiny_config: Any, tmp_path: Path) -> None:
    """num_workers 2 yields exactly the batches of num_workers 0 — augmentation and the MLM corruption
    included (both are drawn from each sample's (seed, epoch, index), not from a process's RNG)."""

    def batches(workers: int) -> list[Any]:
        trainer = make_trainer(
            tiny_model(tiny_config),
            tmp_path / "data",
            tmp_path / f"w{workers}",
            num_workers=workers,
            batch_size=2,
        )
        trainer.collator = GroundingCollator(
            trainer.collator.processor,
            MaskingVocab.from_tokenizer(trainer.collator.processor.tokenizer),
            mlm_probability=0.5,
        )
        stream = trainer.batches()
        return [next(stream) for _ in range(4)]  # past one epoch of 6 samples

    plain, parallel = batches(0), batches(2)
    masked = 0
    for a, b in zip(plain, parallel):
        assert torch.equal(a.pixel_values, b.pixel_values)
        assert torch.equal(a.input_ids, b.input_ids)
        assert a.image_ids == b.image_ids
        for ta, tb in zip(a.targets, b.targets):
            assert ta.keys() == tb.keys()
            assert all(torch.equal(ta[k], tb[k]) for k in ta)
            masked += int((ta["mlm_labels"] != -100).sum())
    assert masked > 0  # the corruption did run


def test_prompt_tuning_trains_only_the_prompt_table(tiny_config: Any, tmp_path: Path) -> None:
    """prompt_tuning: after a step only `core.prompt_embedding` differs (every other tensor is
    bit-identical), and every module runs in eval mode (no dropout, DropBlock or drop path)."""
    model = tiny_model(tiny_config, prompt_embedding_rows=256)
    trainer = make_trainer(
        model, tmp_path / "data", tmp_path / "out", prompt_tuning=True, lr=0.05, weight_decay=0.25
    )
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["core.prompt_embedding"]
    modes: list[tuple[str, bool]] = []

    def record(module: torch.nn.Module, _: Any) -> None:
        modes.append((type(module).__name__, module.training))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if m is not model]
    before = _state(model)
    assert trainer.train_step([next(trainer.batches())]) is not None
    for hook in hooks:
        hook.remove()
    assert modes
    assert [name for name, training in modes if training] == []
    after = _state(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["core.prompt_embedding"]


DDP_RUN = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{tests!r}, {tests!r} + "/engine"]
    import torch, torch.distributed as dist
    from test_trainer import make_trainer, tiny_model
    from conftest import make_tiny_config
    rank, out, kill_at = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    dist.init_process_group("gloo", init_method="file://" + sys.argv[4], rank=rank, world_size=2)
    trainer = make_trainer(tiny_model(make_tiny_config), {data!r}, out, max_steps=6, checkpoint_every=2,
                           batch_size=1, ema_decay=0.9)
    assert isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel)
    real_step = trainer.train_step
    def step_then_maybe_die(batches):
        result = real_step(batches)
        if trainer.step + 1 == kill_at:  # mid-way between two checkpoints: both ranks die here
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    trainer.train_step = step_then_maybe_die
    trainer.train()
    if rank == 0:
        torch.save(trainer.model.state_dict(), os.path.join(out, "final.pt"))
    dist.destroy_process_group()
""")


def test_a_sigkilled_two_process_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_RUN.format(tests=str(REPO / "tests"), data=str(tmp_path / "data")))
    make_dataset(tmp_path / "data")  # once, before any rank reads it
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def run(out: str, kill_at: int) -> list[subprocess.CompletedProcess[str]]:
        store = tmp_path / f"store-{out}-{time.monotonic_ns()}"
        ranks = [
            subprocess.Popen(
                [sys.executable, str(script), str(r), str(tmp_path / out), str(kill_at), str(store)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in (0, 1)
        ]
        done = []
        for p in ranks:
            _, err = p.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, "", err))
        return done

    straight = run("straight", -1)
    assert [p.returncode for p in straight] == [0, 0], "\n".join(p.stderr[-2000:] for p in straight)
    killed = run("resumed", 4)
    assert [p.returncode for p in killed] == [-signal.SIGKILL] * 2, "\n".join(
        p.stderr[-2000:] for p in killed
    )
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["step"] == 2
    resumed = run("resumed", -1)
    assert [p.returncode for p in resumed] == [0, 0], "\n".join(p.stderr[-2000:] for p in resumed)
    a = torch.load(tmp_path / "straight" / "final.pt")
    b = torch.load(tmp_path / "resumed" / "final.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
