"""`glipv2 predict`: fixture parity from the shell, the JSON document, --viz, --one-label-per-box, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from glipv2.cli import main
from glipv2.inference import legacy_nms

# about three times the largest difference measured on this CPU (boxes 3.1e-5, scores 2.4e-7) plus the
# JSON's rounding (boxes to 4 decimals, scores to 6); FIXTURE.md allows 1e-3 and 1e-5
BOX_ATOL, SCORE_ATOL = 2e-4, 2e-6

FIXTURE_CAPTION = "red circle. blue square. green triangle."
FIXTURE_PHRASES = ["red circle", "blue square", "green triangle"]


def predict(*args: str) -> int:
    return main(["predict", *args])


def test_fixture_detections_through_the_cli(
    fixture_model_dir: Path, fixture_dir: Path, tmp_path: Path, fixture_outputs: dict[str, Any]
) -> None:
    out = tmp_path / "results.json"
    code = predict(
        str(fixture_dir / "input.png"),
        "--model",
        str(fixture_model_dir),
        "--no-resize",
        "--threshold",
        "0",
        "--caption",
        FIXTURE_CAPTION,
        "--phrases",
        *FIXTURE_PHRASES,
        "--out",
        str(out),
    )
    assert code == 0
    document = json.loads(out.read_text())
    [entry] = document["images"]
    assert (entry["file"], entry["width"], entry["height"]) == (str(fixture_dir / "input.png"), 256, 256)
    assert entry["prompt"] == FIXTURE_CAPTION
    detections = entry["detections"]
    assert len(detections) == 100
    assert [d["label_index"] + 1 for d in detections] == fixture_outputs["labels"].tolist()
    assert [d["label"] for d in detections[:3]] == ["blue square", "red circle", "green triangle"]
    torch.testing.assert_close(
        torch.tensor([d["box_xyxy"] for d in detections]), fixture_outputs["boxes"], atol=BOX_ATOL, rtol=0
    )
    torch.testing.assert_close(
        torch.tensor([d["score"] for d in detections]), fixture_outputs["scores"], atol=SCORE_ATOL, rtol=0
    )


def test_one_label_per_box_leaves_no_overlapping_boxes(
    fixture_model_dir: Path, fixture_dir: Path, tmp_path: Path
) -> None:
    def overlaps_across_labels(*flags: str) -> int:
        out = tmp_path / "results.json"
        assert (
            predict(
                str(fixture_dir / "input.png"),
                "--model",
                str(fixture_model_dir),
                "--no-resize",
                "--threshold",
                "0",
                "--caption",
                FIXTURE_CAPTION,
                "--phrases",
                *FIXTURE_PHRASES,
                *flags,
                "--out",
                str(out),
            )
            == 0
        )
        [entry] = json.loads(out.read_text())["images"]
        boxes = torch.tensor([d["box_xyxy"] for d in entry["detections"]])
        scores = torch.tensor([d["score"] for d in entry["detections"]])
        # how many boxes an NMS across all labels (IoU 0.6, the model's) would still remove
        return len(boxes) - len(legacy_nms(boxes, scores, torch.zeros(len(boxes), dtype=torch.long), 0.6))

    assert overlaps_across_labels() > 0  # the official per-label NMS keeps one copy per label
    assert overlaps_across_labels("--one-label-per-box") == 0


def test_bad_images_are_reported_and_the_others_still_written(
    fixture_model_dir: Path, fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.png"
    shutil.copy(fixture_dir / "input.png", good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    missing = tmp_path / "missing.png"
    out = tmp_path / "results.json"
    code = predict(
        str(missing),
        str(good),
        str(corrupt),
        str(truncated),
        "--model",
        str(fixture_model_dir),
        "--classes",
        "red circle,blue square",
        "--threshold",
        "0.55",
        "--out",
        str(out),
        "--viz",
        str(tmp_path / "viz"),
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    problem_lines = [line for line in err.splitlines() if line.startswith("glipv2 predict:")]
    assert len(problem_lines) == 3
    for path, line in zip((missing, corrupt, truncated), problem_lines):
        assert str(path) in line
    document = json.loads(out.read_text())
    entries = {Path(e["file"]).name: e for e in document["images"]}
    assert [Path(e["file"]).name for e in document["images"]] == [
        "missing.png",
        "good.png",
        "corrupt.jpg",
        "truncated.png",
    ]
    for name in ("missing.png", "corrupt.jpg", "truncated.png"):
        assert "error" in entries[name] and "detections" not in entries[name]
    assert entries["good.png"]["prompt"] == "red circle. blue square"
    assert all(d["score"] > 0.55 for d in entries["good.png"]["detections"])
    assert document["labels"] == ["red circle", "blue square"]
    viz = Image.open(tmp_path / "viz" / "good.png")
    assert viz.size == (256, 256)
    assert sorted(p.name for p in (tmp_path / "viz").iterdir()) == ["good.png"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", ""], "class name 0"),
        (["--classes", "cat,,dog"], "class name 1"),
        (["--classes", "cat,..."], "punctuation only"),
        (["--caption", "a red circle", "--phrases", "blue square"], "does not occur"),
        (["--caption", "  "], "caption is empty"),
        (["--classes", "cat", "--threshold", "1.5"], "--threshold 1.5"),
        (["--classes", "cat", "--threshold", "-0.1"], "--threshold -0.1"),
        (["--classes", "cat", "--size", "800"], "--size"),
        (["--classes", "cat", "--phrases", "cat"], "--phrases goes with --caption"),
        (["--classes", "cat", "--chunk-size", "0"], "--chunk-size"),
    ],
)
def test_bad_calls_give_one_line_and_exit_2(
    fixture_model_dir: Path,
    fixture_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "results.json"
    code = predict(
        str(fixture_dir / "input.png"), "--model", str(fixture_model_dir), "--out", str(out), *args
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("glipv2 predict:")
    assert not out.exists()


def test_unknown_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = predict(
        "x.png", "--model", str(tmp_path / "nowhere"), "--classes", "cat", "--out", str(tmp_path / "o.json")
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err


def test_a_preset_name_warns_loudly_about_random_weights(
    tmp_path: Path, fixture_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    code = predict(
        str(fixture_dir / "input.png"),
        "--model",
        "glipv2_tiny",
        "--size",
        "128,128",
        "--classes",
        "red circle",
        "--out",
        str(out),
    )
    assert code == 0
    assert "RANDOM weights" in capsys.readouterr().err
    assert json.loads(out.read_text())["images"][0]["width"] == 256


def test_corrupt_weights_and_an_unwritable_out_are_one_line(
    fixture_model_dir: Path, fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(fixture_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"garbage" * 10)
    args = [str(fixture_dir / "input.png"), "--classes", "cat"]
    assert predict(*args, "--model", str(broken), "--out", str(tmp_path / "r.json")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model" in err and "Traceback" not in err
    assert predict(*args, "--model", str(fixture_model_dir), "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err


# --- the stdout table and the model's own threshold ------------------------------------------------
@pytest.fixture(scope="module")
def lenient_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model whose saved processor keeps every candidate (box_threshold 0, inference
    threshold 0): many detections per image, and no --threshold needed to see them."""
    from conftest import make_tiny_config

    from glipv2 import GLIPv2, GLIPv2Processor

    torch.manual_seed(0)
    config = make_tiny_config(
        pad_to_max_query_len=False, inference_threshold=0.0, test_min_size=64, test_max_size=96
    )
    folder = tmp_path_factory.mktemp("lenient_model")
    GLIPv2(config).save_pretrained(folder)
    GLIPv2Processor.from_config(config, box_threshold=0.0).save_pretrained(folder)
    return folder


def noise_png(path: Path, seed: int) -> str:
    pixels = torch.randint(
        0, 255, (60, 80, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )
    Image.fromarray(pixels.numpy()).save(path)
    return str(path)


def test_predict_prints_a_short_table_and_uses_the_models_threshold(
    lenient_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = [noise_png(tmp_path / "a.png", 0), noise_png(tmp_path / "b.png", 1), str(tmp_path / "gone.png")]
    out = tmp_path / "results.json"
    assert predict(*images, "--model", str(lenient_model_dir), "--classes", "cat,dog", "--out", str(out)) == 2
    document = json.loads(out.read_text())
    assert document["threshold"] == 0.0  # the saved box_threshold, not 0.5
    captured = capsys.readouterr()
    assert "2 image(s) processed" in captured.err and "1 failed" in captured.err
    lines = captured.out.splitlines()
    assert lines[0].split() == ["image", "label", "score", "box"]
    for entry in document["images"][:2]:
        rows = [line for line in lines if line.startswith(entry["file"])]
        assert len(rows) == 1  # the name once, on the first row of its block
        block = lines[lines.index(rows[0]) : lines.index(rows[0]) + 6]
        first = entry["detections"][0]
        assert block[0].split()[1:] == [
            *first["label"].split(),
            f"{first['score']:.2f}",
            ",".join(str(round(v)) for v in first["box_xyxy"]),
        ]
        assert len(entry["detections"]) > 5
        assert block[5].strip() == f"… {len(entry['detections']) - 5} more (all in the JSON)"
    # the columns line up: every score ends where the header's "score" does
    score_end = lines[0].index("score") + len("score")
    assert all(line[score_end - 4 : score_end].replace(".", "").isdigit() for line in lines[1:3])
    assert lines[-1].startswith(images[2]) and "error:" in lines[-1]

    assert (
        predict(*images[:1], "--model", str(lenient_model_dir), "--classes", "cat", "--out", str(out), "-q")
        == 0
    )
    assert capsys.readouterr().out == ""


def test_results_table_for_answers_captions_and_nothing_found() -> None:
    from glipv2.inference.command import results_table

    answers = results_table(
        [{"file": "x.png", "answers": [{"answer": "yes", "score": 0.91}, {"answer": "no", "score": 0.08}]}]
    ).splitlines()
    assert [line.split() for line in answers] == [
        ["image", "answer", "score"],
        ["x.png", "yes", "0.91"],
        ["no", "0.08"],
    ]
    captions = results_table(
        [{"file": "x.png", "generated_caption": "a red circle"}, {"file": "y.png", "error": "bad"}]
    )
    assert captions.splitlines() == ["image  caption", "x.png  a red circle", "y.png  error: bad"]
    empty = results_table([{"file": "x.png", "detections": []}])
    assert empty.splitlines()[1] == "x.png  (nothing above the threshold)"
