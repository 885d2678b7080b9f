"""Interrupted runs keep what was done (issue 25, item 2: predict, eval, data shapes).

Each test runs the real command in a subprocess, slowed down a little so that the signal surely
lands mid-run, and sends it SIGINT (what Ctrl-C sends) or SIGTERM once a few images are done. The
slow-down wraps the work of one image and prints "tick" after it: the parent waits for ticks, not
for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_config
from PIL import Image

import glipv2
from glipv2.data.shapes_world import generate_shapes_world

# the child: `glipv2 ARGS...` with one image's work followed by "tick" and a short pause
CHILD = r"""
import sys, time
import glipv2.data.shapes_world as shapes
from glipv2.inference.predictor import Predictor

def ticking(work):
    def run(*args, **kwargs):
        result = work(*args, **kwargs)
        print("tick", flush=True)
        time.sleep(0.15)
        return result
    return run

Predictor.predict_prepared = ticking(Predictor.predict_prepared)
shapes.make_example = ticking(shapes.make_example)
from glipv2.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_interrupted(args: list[str], sig: signal.Signals, after_ticks: int) -> tuple[int, str]:
    """Run `glipv2 ARGS` in a child, send `sig` after `after_ticks` finished items; (rc, stderr)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    ticks = 0
    while ticks < after_ticks:
        line = child.stdout.readline()
        if not line:
            break
        ticks += line.strip() == "tick"
    assert ticks == after_ticks, child.communicate(timeout=60)[1]
    child.send_signal(sig)
    _, err = child.communicate(timeout=120)
    return child.returncode, err


def messages(stderr: str) -> list[str]:
    """stderr without the progress bar's redraws."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("glipv2")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    # every candidate kept (random scores sit below the default 0.05): eval has predictions to write
    model = glipv2.GLIPv2(make_tiny_config(pad_to_max_query_len=False, inference_threshold=0.0))
    return model.save_pretrained(tmp_path_factory.mktemp("model"))


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_predict_interrupted_writes_the_finished_images(
    model_dir: Path, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    images = []
    for i in range(20):
        pixels = np.random.RandomState(i).randint(0, 255, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i:02d}.png")
        images.append(str(tmp_path / f"{i:02d}.png"))
    out = tmp_path / "results.json"
    args = ["predict", *images, "--model", str(model_dir), "--classes", "cat,dog", "--size", "64,96"]
    rc, err = run_interrupted([*args, "--out", str(out), "--viz", str(tmp_path / "viz")], sig, 3)
    assert rc == code and "Traceback" not in err, err
    [line] = messages(err)
    assert line.startswith(f"glipv2 predict: interrupted by {sig.name} after ") and str(out) in line
    document = json.loads(out.read_text())
    assert document["incomplete"] is True and document["interrupted_by"] == sig.name
    done = document["images"]
    # the third tick comes before its image's results are recorded: at least two are
    assert 2 <= len(done) < 20 and all("detections" in e for e in done)
    assert [e["file"] for e in done] == images[: len(done)]
    # every PNG written is whole (written through a temporary file); no temporary file is left
    assert all(p.suffix == ".png" for p in (tmp_path / "viz").iterdir())


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_eval_interrupted_writes_the_finished_predictions(
    model_dir: Path, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    data = tmp_path / "shapes"
    generate_shapes_world(data, 12, seed=5, split="val")
    out = tmp_path / "metrics.json"
    rc, err = run_interrupted(
        [
            "eval",
            "coco",
            "--model",
            str(model_dir),
            "--ann",
            str(data / "instances.json"),
            "--images",
            str(data / "images"),
            "--size",
            "64,96",
            "--no-progress",
            "--out",
            str(out),
        ],
        sig,
        3,
    )
    assert rc == code and "Traceback" not in err, err
    [line] = messages(err)
    assert line.startswith(f"glipv2 eval: interrupted by {sig.name} after ")
    metrics = json.loads(out.read_text())
    assert metrics["incomplete"] is True and metrics["interrupted_by"] == sig.name
    assert 2 <= metrics["images_done"] < metrics["images_total"] == 12
    predictions = json.loads((tmp_path / "metrics_predictions.json").read_text())
    assert isinstance(predictions, list) and predictions  # a COCO results list, scorable later
    assert {p["image_id"] for p in predictions} <= set(range(1, metrics["images_done"] + 1))


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_data_shapes_interrupted_leaves_the_folder_as_it_was(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    previous = tmp_path / "previous"
    generate_shapes_world(previous, 2, seed=1)
    before = {p.relative_to(previous): p.read_bytes() for p in previous.rglob("*") if p.is_file()}
    for out in (previous, tmp_path / "new"):
        rc, err = run_interrupted(["data", "shapes", "--out", str(out), "--num-images", "500"], sig, 3)
        assert rc == code and "Traceback" not in err, err
        [line] = messages(err)
        assert line.startswith(f"glipv2 data shapes: interrupted by {sig.name}")
    after = {p.relative_to(previous): p.read_bytes() for p in previous.rglob("*") if p.is_file()}
    assert after == before  # the previous split, untouched: never images and json that disagree
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous"]  # nothing new, no temporary folder
