"""`glipv2 train` interrupted, pointed at bad data or at its own inputs (issue 25, items 1-3):
SIGTERM / SIGINT save a checkpoint and exit with one line; a resume says where it starts and on
what data, and refuses other data unless told; no usable sample, or epochs without one, stop
instead of looping forever; the skip counts are printed at the end; `--out` never overwrites an
input, a symlink or a FIFO."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from glipv2.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import REPO, make_dataset, make_trainer, tiny_model

# small and quick: 64-pixel images, one step is a fraction of a second on a CPU
RECIPE = {
    "batch_size": 2,
    "min_sizes": [64],
    "max_size": 96,
    "warmup_steps": 1,
    "log_every": 1,
    "lr": 1e-3,
}


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the block runs longer than `seconds`: the old
    trainer looped forever on data without a usable sample."""

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: training hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def model_folder(tiny_config: Any, root: Path) -> Path:
    if not (root / "config.json").is_file():
        tiny_model(tiny_config).save_pretrained(root)
    return root


def train_args(model: Path, data: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        str(model),
        "--train-ann",
        str(data / "instances.json"),
        "--train-images",
        str(data / "images"),
        "--no-val",
        "--config",
        str(config),
        "--out",
        str(out),
        *extra,
    ]


def write_recipe(path: Path, **fields: Any) -> Path:
    path.write_text(json.dumps({**RECIPE, **fields}))
    return path


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("glipv2 train:")]


# --- item 2: interruptions ----------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_exits_with_one_line_then_the_run_resumes(
    tiny_config: Any, tmp_path: Path, sig: signal.Signals
) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    make_dataset(data)
    model = model_folder(tiny_config, tmp_path / "start")
    # no periodic checkpoint before the signal: the one found after it was written because of it
    config = write_recipe(tmp_path / "train.json", max_steps=500, checkpoint_every=1000)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(
        [sys.executable, "-m", "glipv2.cli", *train_args(model, data, out, config)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = time.monotonic()
        log = out / "metrics.jsonl"
        while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
            assert run.poll() is None, run.communicate()[1][-2000:]
            assert time.monotonic() - started < 120, "training did not start"
            time.sleep(0.05)
        run.send_signal(sig)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err
    [line] = error_lines(err)
    assert line.startswith(f"glipv2 train: stopped by {sig.name} at step ") and "saved" in line
    step = int(line.split(" at step ")[1].split(":")[0])
    assert step >= 2
    checkpoint = torch.load(out / "last.pt", weights_only=False)
    assert checkpoint["step"] == step
    assert not list(out.glob(".last.pt.*"))  # no temporary file left behind
    if sig != signal.SIGTERM:
        return
    # the same command again resumes, and says from where and on what data
    config = write_recipe(config, max_steps=step + 1, checkpoint_every=1000)
    resumed = subprocess.run(
        [sys.executable, "-m", "glipv2.cli", *train_args(model, data, out, config)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from step {step} (data {data / 'instances.json'}" in resumed.stderr
    assert torch.load(out / "last.pt", weights_only=False)["step"] == step + 1


def test_a_resume_onto_other_data_is_refused_unless_asked(
    tiny_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, other, out = tmp_path / "first", tmp_path / "other", tmp_path / "run"
    make_dataset(first)
    make_dataset(other, n=8)  # other annotations
    model = model_folder(tiny_config, tmp_path / "start")
    config = write_recipe(tmp_path / "train.json", max_steps=1, checkpoint_every=1)
    assert main(train_args(model, first, out, config)) == 0
    saved = (out / "last.pt").read_bytes()
    capsys.readouterr()

    config = write_recipe(config, max_steps=2, checkpoint_every=1)
    assert main(train_args(model, other, out, config)) == 2
    err = capsys.readouterr().err
    [line] = error_lines(err)
    assert "other data" in line and str(first / "instances.json") in line and "--resume-other-data" in line
    assert (out / "last.pt").read_bytes() == saved

    # the same data in another place is the same data (the content is compared, not the path)
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    assert main(train_args(model, copy, out, config)) == 0
    assert f"resuming from step 1 (data {copy / 'instances.json'}" in capsys.readouterr().err

    config = write_recipe(config, max_steps=3, checkpoint_every=1)
    assert main(train_args(model, other, out, config, "--resume-other-data")) == 0
    err = capsys.readouterr().err
    assert "resuming from step 2 (data " in err and "the checkpoint was written for" in err
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 3


def test_the_trainer_refuses_other_data_unless_told(tiny_config: Any, tmp_path: Path) -> None:
    from glipv2.engine.trainer import TrainingSetupError

    make_trainer(tiny_model(tiny_config), tmp_path / "a", tmp_path / "run", max_steps=1).train()
    saved = (tmp_path / "run" / "last.pt").read_bytes()
    make_dataset(tmp_path / "b")  # the same images, a class renamed: other annotations
    (tmp_path / "b" / "instances.json").write_text(
        (tmp_path / "b" / "instances.json").read_text().replace("red circle", "red disc")
    )
    again = make_trainer(tiny_model(tiny_config), tmp_path / "b", tmp_path / "run", max_steps=2)
    with pytest.raises(TrainingSetupError, match="other data"):
        again.train()
    assert (tmp_path / "run" / "last.pt").read_bytes() == saved
    again.resume_other_data = True
    assert again.train()["steps"] == 2


# --- item 3: no hangs ---------------------------------------------------------------------------
@pytest.mark.parametrize("broken", ["wrong image folder", "every image corrupt"])
def test_no_usable_sample_stops_before_the_first_step(
    tiny_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], broken: str
) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    make_dataset(data)
    if broken == "wrong image folder":
        (data / "elsewhere").mkdir()
        images = data / "elsewhere"
    else:
        images = data / "images"
        for png in images.iterdir():
            png.write_bytes(b"not an image")
    model = model_folder(tiny_config, tmp_path / "start")
    config = write_recipe(tmp_path / "train.json", max_steps=2)
    args = train_args(model, data, out, config)
    args[args.index("--train-images") + 1] = str(images)
    with deadline(60):
        code = main(args)
    assert code == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith("glipv2 train: no usable training sample: training not started")
    why = "no such image file" if broken == "wrong image folder" else "cannot read the image"
    assert f"12 samples skipped (12 × {why}" in line  # 6 samples, 2 epochs (max_empty_epochs)
    assert not (out / "last.pt").exists()


def test_epochs_without_a_usable_batch_stop_a_running_training(tiny_config: Any, tmp_path: Path) -> None:
    trainer = make_trainer(
        tiny_model(tiny_config), tmp_path / "data", tmp_path / "run", max_steps=1, checkpoint_every=1
    )
    trainer.train()
    saved = trainer.checkpoint_path.read_bytes()
    shutil.rmtree(tmp_path / "data" / "images")  # the images are gone from now on
    trainer.config = trainer.config.replace(max_steps=3, max_empty_epochs=3)
    with deadline(60), pytest.raises(Exception, match="no usable batch at step 1") as stopped:
        trainer.train()
    assert type(stopped.value).__name__ == "NoUsableData"
    assert "3 epoch(s) of 6 samples in a row, 9 batches" in str(stopped.value)
    assert "18 samples skipped (18 × no such image file" in str(stopped.value)
    assert trainer.checkpoint_path.read_bytes() == saved


def test_the_skip_counts_are_printed_at_the_end(
    tiny_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    make_dataset(data)
    (data / "images" / "3.png").unlink()
    model = model_folder(tiny_config, tmp_path / "start")
    config = write_recipe(tmp_path / "train.json", max_steps=3, flip_probability=0.0)
    assert main(train_args(model, data, out, config)) == 0
    err = capsys.readouterr().err
    [summary] = [line for line in err.splitlines() if line.startswith("skipped: ")]
    assert "1 sample skipped (1 × no such image file, e.g. sample 3: " in summary


# --- item 1: the run folder never overwrites an input -----------------------------------------------
@pytest.mark.parametrize(
    "case", ["out is the image folder", "out holds the annotations", "model is OUT/model", "config in out"]
)
def test_an_out_folder_that_is_or_holds_an_input_is_refused(
    tiny_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    data = tmp_path / "data"
    make_dataset(data)
    config = write_recipe(tmp_path / "train.json", max_steps=1)
    model = model_folder(tiny_config, tmp_path / "start")
    out = tmp_path / "run"
    if case == "out is the image folder":
        out = data / "images"
    elif case == "out holds the annotations":
        out = data
    elif case == "model is OUT/model":
        model = model_folder(tiny_config, out / "model")  # the previous run's model, fine-tuned again
    else:
        out.mkdir()
        config = write_recipe(out / "train_config.json", max_steps=1)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(train_args(model, data, out, config)) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"glipv2 train: --out {out}: holds the input ")
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing replaced


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_symlink_or_fifo_at_the_checkpoint_is_refused(
    tiny_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    make_dataset(data)
    out.mkdir()
    precious = tmp_path / "precious.bin"
    precious.write_bytes(b"someone's file")
    if kind == "symlink":
        (out / "last.pt").symlink_to(precious)
    else:
        os.mkfifo(out / "last.pt")
    model = model_folder(tiny_config, tmp_path / "start")
    config = write_recipe(tmp_path / "train.json", max_steps=1)
    with deadline(60):  # a FIFO opened for reading blocks
        code = main(train_args(model, data, out, config, "--no-resume"))
    assert code == 2
    [line] = error_lines(capsys.readouterr().err)
    assert str(out / "last.pt") in line and f"is a {'symlink' if kind == 'symlink' else 'FIFO'}" in line
    if kind == "symlink":
        assert (out / "last.pt").is_symlink() and precious.read_bytes() == b"someone's file"
    else:
        assert (out / "last.pt").is_fifo()
    assert not (out / "metrics.jsonl").exists()
