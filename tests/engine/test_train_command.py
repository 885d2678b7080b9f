"""`glipv2 train`: a short run on a ShapesWorld split with periodic evaluation, one without any, and bad
input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from glipv2 import GLIPv2, GLIPv2Config
from glipv2.cli import main
from glipv2.data.shapes_world import generate_shapes_world


def test_train_on_shapes_world_with_evaluation(tmp_path: Path, tiny_config: Any) -> None:
    data = tmp_path / "shapes"
    generate_shapes_world(data, 4, seed=0, split="train")
    torch.manual_seed(0)
    model_dir = GLIPv2(
        tiny_config(pad_to_max_query_len=False, region_word_contrastive_dim=16, mlm_head=True)
    ).save_pretrained(tmp_path / "start")
    config = tmp_path / "train.json"
    config.write_text(
        json.dumps(
            {
                "max_steps": 2,
                "batch_size": 2,
                "min_sizes": [96],
                "max_size": 128,
                "warmup_steps": 1,
                "log_every": 1,
                "checkpoint_every": 1,
            }
        )
    )
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            str(model_dir),
            "--train-ann",
            str(data / "instances.json"),
            "--train-images",
            str(data / "images"),
            "--val-ann",
            str(data / "instances.json"),
            "--val-images",
            str(data / "images"),
            "--val-limit",
            "2",
            "--config",
            str(config),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert {"loss_giou", "loss_centerness", "loss_intra", "loss_inter", "loss_mlm"} <= set(steps[0])
    [evaluation] = [r["eval"] for r in log if "eval" in r]
    assert 0.0 <= evaluation["bbox"]["AP50"] <= 1.0
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 2
    trained = GLIPv2.from_pretrained(out / "model")
    assert isinstance(trained.config, GLIPv2Config)
    key = "heads.grounding.bias0"
    assert not torch.equal(trained.state_dict()[key], GLIPv2.from_pretrained(model_dir).state_dict()[key])


def test_no_val_generates_no_val_split_and_evaluates_nothing(tmp_path: Path, tiny_config: Any) -> None:
    torch.manual_seed(0)
    model_dir = GLIPv2(
        tiny_config(pad_to_max_query_len=False, region_word_contrastive_dim=16)
    ).save_pretrained(tmp_path / "start")
    config = tmp_path / "train.json"
    config.write_text(
        json.dumps(
            {
                "max_steps": 1,
                "batch_size": 2,
                "min_sizes": [96],
                "max_size": 128,
                "warmup_steps": 0,
                "log_every": 1,
                "eval_every": 1,
            }
        )
    )
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                str(model_dir),
                "--shapes-images",
                "2",
                "--no-val",
                "--config",
                str(config),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "data" / "train" / "instances.json").is_file() and not (out / "data" / "val").exists()
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1] and not any("eval" in r for r in log)
    assert (out / "model" / "config.json").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train-ann", "x.json"], "--train-ann and --train-images go together"),
        (["--train-ann", "missing.json", "--train-images", "."], "missing.json"),
        (["--config", "nowhere.yaml", "--train-ann", "a", "--train-images", "b"], "--config"),
        (["--no-val", "--val-ann", "a", "--val-images", "b"], "--no-val and --val-ann exclude each other"),
    ],
)
def test_bad_calls_give_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["train", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_config_file_changes_the_model_and_the_losses(
    tmp_path: Path, tiny_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "shapes"
    generate_shapes_world(data, 2, seed=0, split="train")
    model_dir = GLIPv2(
        tiny_config(pad_to_max_query_len=False, region_word_contrastive_dim=16, mlm_head=True)
    ).save_pretrained(tmp_path / "start")
    recipe = {
        "max_steps": 1,
        "batch_size": 2,
        "min_sizes": [96],
        "max_size": 128,
        "warmup_steps": 0,
        "log_every": 1,
        "model_overrides": {"mlm_head": False, "deformable_conv_impl": "grid_sample"},
        "losses": {"use_inter": False},
    }
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps(recipe))
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                str(model_dir),
                "--train-ann",
                str(data / "instances.json"),
                "--train-images",
                str(data / "images"),
                "--config",
                str(config),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    [step] = [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line
    ]
    assert "loss_inter" not in step and "loss_mlm" not in step and "loss_intra" in step
    trained = GLIPv2.from_pretrained(out / "model")
    assert trained.config.mlm_head is False and trained.config.deformable_conv_impl == "grid_sample"

    config.write_text(json.dumps({**recipe, "losses": {"use_intre": False}}))
    assert (
        main(
            [
                "train",
                "--model",
                str(model_dir),
                "--train-ann",
                str(data / "instances.json"),
                "--train-images",
                str(data / "images"),
                "--config",
                str(config),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "unknown LossConfig field(s) use_intre" in capsys.readouterr().err
