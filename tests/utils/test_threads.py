"""`--threads N` on predict, eval, train and serve: parsed, refused when not >= 1, applied to torch."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from glipv2.cli import main
from glipv2.utils.threads import apply_threads, thread_count


def test_thread_count_parses_whole_numbers_from_one() -> None:
    assert thread_count("3") == 3
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            thread_count(bad)


@pytest.mark.parametrize("command", ["predict", "eval", "train", "serve"])
def test_every_running_command_takes_threads(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--threads N" in capsys.readouterr().out


def test_predict_refuses_zero_threads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["predict", "x.png", "--classes", "cat", "--threads", "0", "--out", str(tmp_path / "o.json")])
    assert stop.value.code == 2
    assert "argument --threads: 0: must be >= 1" in capsys.readouterr().err


def test_predict_runs_with_the_given_thread_count(
    fixture_model_dir: Path, fixture_dir: Path, tmp_path: Path
) -> None:
    before = torch.get_num_threads()
    try:
        code = main(
            [
                "predict",
                str(fixture_dir / "input.png"),
                "--model",
                str(fixture_model_dir),
                "--classes",
                "circle",
                "--threads",
                "1",
                "--out",
                str(tmp_path / "o.json"),
                "-q",
            ]
        )
        assert code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    apply_threads(None)  # no option: torch's own choice stays
    assert torch.get_num_threads() == before
