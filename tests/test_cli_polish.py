"""`glipv2 --version`, `glipv2 COMMAND:` on every error, umask permissions, mistyped local model
paths (issue 25, item 8)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURE_DIR, make_tiny_config
from PIL import Image

import glipv2
from glipv2 import cli
from glipv2.cli import main
from glipv2.loading import load_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = glipv2.GLIPv2(make_tiny_config(pad_to_max_query_len=False))
    return model.save_pretrained(tmp_path_factory.mktemp("model"))


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"glipv2 {glipv2.__version__}"


def test_every_command_prefixes_its_errors(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    calls = {
        "predict": ["predict", "x.png", "--model", str(model_dir), "--classes", "a", "--out", str(tmp_path)],
        "eval": [
            "eval",
            "coco",
            "--model",
            str(model_dir),
            "--ann",
            "a.json",
            "--out",
            str(tmp_path / "m.json"),
        ],
        "convert": ["convert", str(tmp_path / "absent.pth"), str(tmp_path / "m"), "--arch", "glip_t"],
        "data shapes": ["data", "shapes", "--out", str(a_file), "--num-images", "1"],
        "demo": ["demo", "--weights", str(tmp_path / "no_weights"), "--out", str(tmp_path / "demo")],
    }
    for command, argv in calls.items():
        assert main(argv) == 2, command
        err = error_line(capsys)
        assert err.startswith(f"glipv2 {command}: ") and f"glipv2 {command}: glipv2" not in err, err
    assert not (tmp_path / "demo").exists()  # the demo's weights are checked before any work


def test_convert_warnings_and_problems_are_prefixed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not (FIXTURE_DIR / "glip_tiny_random.pth").is_file():
        pytest.skip("parity fixture not found")
    state = dict(torch.load(FIXTURE_DIR / "glip_tiny_random.pth", weights_only=True)["model"])
    del state["module.rpn.head.centerness.bias"]
    src = tmp_path / "partial.pth"
    torch.save({"model": state}, src)
    args = [
        "convert",
        str(src),
        str(tmp_path / "m"),
        "--official-config",
        str(FIXTURE_DIR / "config_full.yaml"),
        "--text-config",
        str(FIXTURE_DIR / "tiny_bert_config.json"),
    ]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"glipv2 convert: {src}: ")
    assert main([*args, "--allow-partial"]) == 0
    assert capsys.readouterr().err == "glipv2 convert: warning: missing: heads.grounding.centerness.bias\n"


def test_ctrl_c_outside_a_command_loop_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_models", interrupted)
    try:
        code = main(["models"])
    except KeyboardInterrupt:  # would stop pytest itself
        pytest.fail("KeyboardInterrupt escaped glipv2's main")
    assert code == 130
    assert error_line(capsys) == "glipv2 models: interrupted"


@pytest.mark.parametrize("name", ["./my_modle", "runs/x/model", "/nowhere/model"])
def test_a_mistyped_local_path_is_a_missing_path_not_a_hub_id(
    name: str,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for load in (load_model, glipv2.GLIPv2.from_pretrained):
        with pytest.raises(FileNotFoundError, match="no such model folder") as info:
            load(name)
        assert "hub" not in str(info.value)
    assert main(["predict", "x.png", "--model", name, "--classes", "a", "--out", "r.json"]) == 2
    err = error_line(capsys)
    assert "no such model folder" in err and "hub" not in err.lower()
    # `runs/model` when runs/ exists here is a path too; `owner/name` is still a hub id
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_model("runs/model")


@pytest.fixture
def umask_002() -> Iterator[None]:
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def modes(folder: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) & ~0o111 for p in folder.rglob("*") if p.is_file()}


def test_saved_files_follow_the_umask(umask_002: None, model_dir: Path, tmp_path: Path) -> None:
    """Group-writable folder (umask 002): every file written is 0664, as any other file there."""
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(image)
    out = tmp_path / "out"
    argv = ["predict", str(image), "--model", str(model_dir), "--classes", "a", "--size", "64,96"]
    assert main([*argv, "--out", str(out / "r.json"), "--viz", str(out / "viz")]) == 0
    assert main(["data", "shapes", "--out", str(out / "shapes"), "--num-images", "1"]) == 0
    assert json.loads((out / "r.json").read_text())["images"]
    assert modes(out) == {0o664}
    if (FIXTURE_DIR / "glip_tiny_random.pth").is_file():
        converted = tmp_path / "converted"
        assert (
            main(
                [
                    "convert",
                    str(FIXTURE_DIR / "glip_tiny_random.pth"),
                    str(converted),
                    "--official-config",
                    str(FIXTURE_DIR / "config_full.yaml"),
                    "--text-config",
                    str(FIXTURE_DIR / "tiny_bert_config.json"),
                ]
            )
            == 0
        )
        assert modes(converted) == {0o664} and stat.S_IMODE(converted.stat().st_mode) == 0o775


def test_prompt_warnings_are_one_prefixed_line(
    fixture_model_dir: Path, fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A duplicate class name warns (`PromptWarning`) as `glipv2 predict: warning: ...` on one line,
    not Python's two-line warning with a source line."""
    out = tmp_path / "results.json"
    args = ["predict", str(fixture_dir / "input.png"), "--model", str(fixture_model_dir), "--no-resize"]
    assert main([*args, "--classes", "red circle,blue square,red circle", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert lines and all(line.startswith("glipv2 predict: warning: ") for line in lines), lines
    assert not any("PromptWarning" in line or ".py:" in line for line in lines)
