"""The evaluator protocol: gathering to rank 0 in a real 2-process gloo group, composing
evaluators, and the up-front prompt check."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from glipv2 import Detections
from glipv2.evaluation import COCOEvaluator, DatasetEvaluators, EvalSample, FlickrEvaluator
from glipv2.evaluation.base import Benchmark

WORLD = 2
GT = {
    "images": [{"id": i, "width": 100, "height": 80, "file_name": f"{i}.png"} for i in (1, 2, 3, 4)],
    "annotations": [
        {
            "id": i,
            "image_id": i,
            "category_id": 3 if i % 2 else 7,
            "bbox": [10 * i, 10, 30, 20],
            "area": 600,
            "iscrowd": 0,
        }
        for i in (1, 2, 3, 4)
    ],
    "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
}
# per image: one good box (IoU 1 with its GT) of the right label and a wrong "cat" box, scoring
# above the good ones on some images (so AP < 1)
PREDICTED = {
    i: ([[10.0 * i, 10, 10 * i + 29, 29], [0, 50, 20, 70]], [0.6, 0.5 + 0.1 * i], [i % 2 == 0, 0])
    for i in (1, 2, 3, 4)
}


def detections(image_id: int) -> Detections:
    boxes, scores, labels = PREDICTED[image_id]
    return Detections(
        torch.tensor(boxes),
        torch.tensor(scores),
        torch.tensor(labels, dtype=torch.int64),
        ["cat", "dog"],
        (80, 100),
    )


def samples(*ids: int) -> list[EvalSample]:
    return [EvalSample(Path(f"{i}.png"), i, classes=("cat", "dog")) for i in ids]


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/store",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        evaluator = COCOEvaluator(Path(folder) / "gt.json", [3, 7])
        mine = [1, 2, 3, 4][rank::world]
        evaluator.process(samples(*mine), [detections(i) for i in mine])
        metrics = evaluator.evaluate()
        Path(folder, f"rank{rank}.json").write_text(
            json.dumps({"metrics": metrics, "predictions": evaluator.predictions()})
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_rank_0_the_single_process_metrics(tmp_path: Path) -> None:
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    single = COCOEvaluator(tmp_path / "gt.json", [3, 7], distributed=False)
    single.process(samples(1, 2, 3, 4), [detections(i) for i in (1, 2, 3, 4)])
    expected = single.evaluate()
    assert 0 < expected["bbox"]["AP"] < 1

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(
        _worker, args=(WORLD, str(tmp_path)), nprocs=WORLD, join=False, start_method=method
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process group did not finish within 120 s")
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert rank0["metrics"] == expected and rank1["metrics"] == {}
    # rank 0's predictions file holds every rank's entries
    assert sorted(p["image_id"] for p in rank0["predictions"]) == [1, 1, 2, 2, 3, 3, 4, 4]


def test_composed_evaluators_share_inputs_and_merge_metrics(tmp_path: Path) -> None:
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    flickr_json = {
        "images": [{"id": 1, "file_name": "1.png", "caption": "a cat", "tokens_positive_eval": [[[2, 5]]]}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [10, 10, 20, 20], "tokens_positive": [[2, 5]], "category_id": 1}
        ],
        "categories": [{"id": 1, "name": "object"}],
    }
    (tmp_path / "flickr.json").write_text(json.dumps(flickr_json))
    coco = COCOEvaluator(tmp_path / "gt.json", [3, 7], distributed=False)
    both = DatasetEvaluators([coco, FlickrEvaluator(tmp_path / "flickr.json", distributed=False)])
    both.process(samples(1), [detections(1)])
    metrics = both.evaluate()
    assert set(metrics) == {"bbox", "flickr"} and metrics["flickr"]["phrases"] == 1
    with pytest.raises(ValueError, match="two evaluators report"):
        DatasetEvaluators([coco, coco]).evaluate()


class _Tokenizing:
    """Just enough of a Predictor for `check_prompts`: its processor's tokenizer."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def detection_vocabulary(self, classes: list[str], chunk_size: int | None) -> None:
        return None


def test_prompts_too_long_for_the_token_slots_fail_up_front(tiny_model: Any) -> None:
    from glipv2 import GLIPv2Processor

    processor = GLIPv2Processor.from_config(tiny_model.config.replace(max_query_len=16))
    caption = "a " + " ".join(["very"] * 40) + " long cat"
    long_sample = EvalSample(Path("x.png"), 9, caption=caption, spans=(((len(caption) - 3, len(caption)),),))
    short_sample = EvalSample(Path("y.png"), 8, caption="a cat", spans=(((2, 5),),))
    benchmark = Benchmark("flickr", [short_sample, long_sample], COCOEvaluator.__new__(COCOEvaluator))
    with pytest.raises(ValueError, match="flickr: image id 9"):
        benchmark.check_prompts(_Tokenizing(processor))
    Benchmark("flickr", [short_sample], benchmark.evaluator).check_prompts(_Tokenizing(processor))
