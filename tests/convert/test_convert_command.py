"""`glipv2 convert` (glipv2.convert.command), run in-process."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch

from glipv2 import GLIPv2
from glipv2.convert.command import add_convert_parser, main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["convert", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_convert_with_official_config(
    fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    status, stdout, stderr = run(
        [
            str(fixture_dir / "glip_tiny_random.pth"),
            str(out),
            "--official-config",
            str(fixture_dir / "config_full.yaml"),
            "--text-config",
            str(fixture_dir / "tiny_bert_config.json"),
        ],
        capsys,
    )
    assert (status, stderr) == (0, "")
    assert "converted 300 tensors, ignored 0, derived 13" in stdout and f"wrote {out}" in stdout
    assert GLIPv2.from_pretrained(out).config.num_head_blocks == 2


def test_problems_go_to_stderr_one_per_line_with_status_2(
    fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fixture's YAML without its BERT config: exit 2, the LANG_DIM problem, no traceback."""
    out = tmp_path / "model"
    status, stdout, stderr = run(
        [
            str(fixture_dir / "glip_tiny_random.pth"),
            str(out),
            "--official-config",
            str(fixture_dir / "config_full.yaml"),
        ],
        capsys,
    )
    assert status == 2 and stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("glipv2 convert: ") and "--text-config" in lines[0]
    assert "Traceback" not in stderr and not out.exists()


def test_mismatched_bert_lists_every_key(
    fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--arch glip_t on the tiny checkpoint: one stderr line per problem key, then the hint."""
    src = tmp_path / "glip_tiny_model_o365_goldg.pth"  # a released name: --arch is implied
    shutil.copyfile(fixture_dir / "glip_tiny_random.pth", src)
    status, _, stderr = run([str(src), str(tmp_path / "model")], capsys)
    lines = stderr.splitlines()
    assert status == 2 and len(lines) > 100
    assert all(line.startswith(f"glipv2 convert: {src}: ") for line in lines)
    assert any("mismatch: module.backbone.body.patch_embed.proj.weight" in line for line in lines)
    assert "--text-config" in lines[-1]


def test_arch_with_text_config(fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--arch glip_t + the tiny BERT still differs from the fixture (Swin width): exit 2."""
    status, _, stderr = run(
        [
            str(fixture_dir / "glip_tiny_random.pth"),
            str(tmp_path / "m"),
            "--arch",
            "glip_t",
            "--text-config",
            str(fixture_dir / "tiny_bert_config.json"),
        ],
        capsys,
    )
    assert status == 2 and "hint:" not in stderr  # the BERT matches now; the rest does not
    assert "mismatch: module.backbone.body.patch_embed.proj.weight (32, 3, 4, 4)" in stderr


def test_allow_partial_warns_and_succeeds(
    fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = dict(torch.load(fixture_dir / "glip_tiny_random.pth", weights_only=True)["model"])
    del state["module.rpn.head.centerness.bias"]
    src = tmp_path / "partial.pth"
    torch.save({"model": state}, src)
    args = [
        str(src),
        str(tmp_path / "m"),
        "--official-config",
        str(fixture_dir / "config_full.yaml"),
        "--text-config",
        str(fixture_dir / "tiny_bert_config.json"),
    ]
    status, _, stderr = run(args, capsys)
    assert status == 2 and "glipv2 convert: " in stderr
    status, stdout, stderr = run([*args, "--allow-partial"], capsys)
    assert status == 0 and stderr == "glipv2 convert: warning: missing: heads.grounding.centerness.bias\n"
    assert "left at random init 1" in stdout


def test_unknown_file_name_needs_arch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "mystery.pth"
    torch.save({"model": {}}, src)
    status, _, stderr = run([str(src), str(tmp_path / "m")], capsys)
    assert status == 2 and "mystery.pth: not a released GLIP checkpoint name" in stderr and "arch" in stderr


def test_missing_file_and_exclusive_options(
    fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, stderr = run([str(tmp_path / "absent.pth"), str(tmp_path / "m"), "--arch", "glip_t"], capsys)
    assert status == 2 and stderr == f"glipv2 convert: {tmp_path / 'absent.pth'}: no such file\n"
    with pytest.raises(SystemExit) as info:
        main(["convert", "a.pth", "out", "--arch", "glip_t", "--official-config", "c.yaml"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_add_convert_parser_plugs_into_another_cli() -> None:
    parser = argparse.ArgumentParser(prog="glipv2")
    subparsers = parser.add_subparsers(dest="command", required=True)
    subparsers.add_parser("models")
    add_convert_parser(subparsers)
    args = parser.parse_args(["convert", "x.pth", "out", "--arch", "glip_l", "--allow-pickle"])
    assert (args.command, args.src, args.out_dir, args.arch, args.allow_pickle, args.allow_partial) == (
        "convert",
        "x.pth",
        "out",
        "glip_l",
        True,
        False,
    )
    assert callable(args.func)
