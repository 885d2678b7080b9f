"""Multi-task data: the mixture's plan (one task per batch, proportions, determinism, ranks in step)
and the VQA / caption collators' targets; and a short multi-task training run where every head
learns."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from glipv2 import GLIPv2, GLIPv2Processor
from glipv2.data.captions import CaptionSample
from glipv2.data.collate import Skipped
from glipv2.data.tasks import CaptionCollator, MultiTaskCollator, TaskMixture, VQACollator
from glipv2.data.vqa import VQASample
from glipv2.modeling.heads import IGNORE_INDEX


class Items(torch.utils.data.Dataset):
    def __init__(self, n: int, tag: str) -> None:
        self.n, self.tag = n, tag

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return Skipped(f"{self.tag} {i}")  # the plan tests only look at indices


def mixture() -> TaskMixture:
    return TaskMixture(
        {"detection": Items(40, "d"), "vqa": Items(200, "v"), "caption": Items(12, "c")},
        {"detection": 2.0, "vqa": 1.0, "caption": 1.0},
    )


def test_every_batch_holds_one_task_in_the_weighted_proportions() -> None:
    data = mixture()
    plan = data.epoch_batches(batch_size=4, seed=0, epoch=0, rank=0, world=1)
    tasks = [{data.task_of(i) for i in batch} for batch in plan]
    assert all(len(t) == 1 for t in tasks) and all(len(b) == 4 for b in plan)
    counts = Counter(t.pop() for t in tasks)
    # 63 batches fill an epoch (10 + 50 + 3); the weights 2:1:1 share them out, each task's share
    # rounded: round(31.5) + round(15.75) + round(15.75)
    assert counts == {"detection": 32, "vqa": 16, "caption": 16}
    # caption has 12 samples for 64 slots: its permutations are cycled, each sample 5-6 times
    uses = Counter(i for b in plan for i in b if data.task_of(i) == "caption")
    assert set(uses) == set(range(240, 252)) and max(uses.values()) - min(uses.values()) <= 1


def test_the_plan_depends_on_seed_and_epoch_only_and_ranks_run_the_same_task() -> None:
    data = mixture()
    assert data.epoch_batches(4, 0, 3, 0, 1) == mixture().epoch_batches(4, 0, 3, 0, 1)
    assert data.epoch_batches(4, 0, 3, 0, 1) != data.epoch_batches(4, 0, 4, 0, 1)
    assert data.epoch_batches(4, 0, 3, 0, 1) != data.epoch_batches(4, 1, 3, 0, 1)
    rank0, rank1 = data.epoch_batches(2, 0, 0, 0, 2), data.epoch_batches(2, 0, 0, 1, 2)
    assert len(rank0) == len(rank1)
    for a, b in zip(rank0, rank1):
        assert {data.task_of(i) for i in a + b} == {data.task_of(a[0])}
        assert not set(a) & set(b)


def test_a_mixture_refuses_unknown_tasks_and_missing_weights() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        TaskMixture({"segmentation": Items(2, "s")}, {"segmentation": 1.0})
    with pytest.raises(ValueError, match="no sampling weight"):
        TaskMixture({"vqa": Items(2, "v")}, {})
    # a weight of 0 leaves the task out
    data = TaskMixture({"vqa": Items(8, "v"), "caption": Items(8, "c")}, {"vqa": 1.0, "caption": 0.0})
    assert list(data.datasets) == ["vqa"]


@pytest.fixture(scope="module")
def processor(tiny_config: Any) -> GLIPv2Processor:
    config = tiny_config(pad_to_max_query_len=False, vqa_answers=("yes", "no", "2"), caption_head=True)
    return GLIPv2Processor.from_config(config)


def _image(size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, (120, 40, 40))


def test_vqa_collator_soft_scores(processor: GLIPv2Processor) -> None:
    samples = [
        VQASample(_image(), "is it red?", 1, 1, ["yes"] * 8 + ["no"] * 2),
        VQASample(_image((32, 48)), "how many?", 2, 2, ["two"] * 1 + ["3"] * 9),  # "two" normalises to "2"
        Skipped("sample 9: no such image"),
    ]
    batch = VQACollator(processor)(samples)
    assert batch.heads == ("vqa",) and batch.task == "vqa" and batch.skipped == ["sample 9: no such image"]
    assert batch.pixel_values.shape[0] == 2 and batch.input_ids.shape[0] == 2
    # min(1, annotators / 3); "3" is not in the vocabulary
    torch.testing.assert_close(batch.targets[0]["vqa_scores"], torch.tensor([1.0, 2 / 3, 0.0]))
    torch.testing.assert_close(batch.targets[1]["vqa_scores"], torch.tensor([0.0, 0.0, 1 / 3]))


def test_caption_collator_picks_a_caption_per_key_and_shifts_labels(processor: GLIPv2Processor) -> None:
    def sample(key: Any) -> CaptionSample:
        s = CaptionSample(_image(), 1, ["a red circle.", "one red circle on grey.", "red circle"], "x.png")
        s.meta["key"] = key
        return s

    collator = CaptionCollator(processor)
    first = collator([sample((0, 0, 1))])
    assert first.captions == collator([sample((0, 0, 1))]).captions  # the same key, the same caption
    chosen = {collator([sample((0, epoch, 1))]).captions[0] for epoch in range(12)}
    assert len(chosen) > 1  # other epochs draw other captions
    ids, labels = first.input_ids[0], first.targets[0]["caption_labels"]
    assert labels[:-1].tolist() == ids[1:].tolist() and int(labels[-1]) == IGNORE_INDEX
    assert first.heads == ("caption",)


def test_multi_task_collator_refuses_a_mixed_batch(processor: GLIPv2Processor) -> None:
    collator = MultiTaskCollator(
        {VQASample: VQACollator(processor), CaptionSample: CaptionCollator(processor)}
    )
    vqa = VQASample(_image(), "is it red?", 1, 1, ["yes"])
    caption = CaptionSample(_image(), 1, ["a red circle."], "x.png")
    with pytest.raises(ValueError, match="one task per batch"):
        collator([vqa, caption])
    vqa.meta["task"] = "vqa"
    assert collator([vqa]).task == "vqa"
    assert len(collator([Skipped("gone")])) == 0


def test_multi_task_training_on_shapes_world_trains_every_head(tmp_path: Path, tiny_config: Any) -> None:
    """`glipv2 train` with no data arguments on a tiny ShapesWorld: detection, grounding, VQA and
    caption batches come, each head's parameters move, and the saved model answers and captions."""
    import json

    from glipv2.cli import main

    torch.manual_seed(0)
    start = GLIPv2(tiny_config(pad_to_max_query_len=False, mask_head=True))
    model_dir = start.save_pretrained(tmp_path / "start")
    GLIPv2Processor.from_config(start.config).save_pretrained(model_dir)
    config = tmp_path / "train.json"
    config.write_text(
        json.dumps(
            {
                "max_steps": 12,
                "batch_size": 2,
                "min_sizes": [96],
                "max_size": 128,
                "warmup_steps": 0,
                "log_every": 12,
                "lr": 1e-3,
                "tasks": {"detection": 1.0, "grounding": 1.0, "vqa": 1.0, "caption": 1.0},
            }
        )
    )
    out = tmp_path / "run"
    torch.manual_seed(123)  # the fresh heads' initialisation, reproduced below
    with pytest.warns(UserWarning, match="added the vqa, caption head"):
        code = main(
            [
                "train",
                "--model",
                str(model_dir),
                "--shapes-images",
                "4",
                "--no-val",
                "--config",
                str(config),
                "--out",
                str(out),
            ]
        )
    assert code == 0
    [record] = [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line
    ]
    assert set(record["tasks"]) == {"detection", "grounding", "vqa", "caption"}
    assert "loss_vqa" in record["tasks"]["vqa"] and "loss_caption" in record["tasks"]["caption"]
    trained = GLIPv2.from_pretrained(out / "model")
    assert trained.config.caption_head and "2" in trained.config.vqa_answers
    torch.manual_seed(123)
    with pytest.warns(UserWarning, match="fresh weights"):
        initial = GLIPv2.from_pretrained(model_dir, vqa_answers=trained.config.vqa_answers, caption_head=True)
    assert all(
        torch.equal(v, start.state_dict()[k])
        for k, v in initial.state_dict().items()
        if k in start.state_dict()
    )
    for head in ("grounding", "vqa", "caption", "mask"):
        before = initial.heads[head].state_dict()
        after = trained.heads[head].state_dict()
        moved = [k for k in after if not torch.equal(after[k], before[k])]
        assert moved, f"the {head} head did not train"
