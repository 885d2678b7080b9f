"""`import glipv2`, building the `glipv2` parser, `glipv2 --help` and `glipv2 models` import neither
torch nor transformers nor PIL (they answer at once); each command's sub-parser is filled in from
its own module when that command runs."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

import glipv2
from glipv2 import cli

HEAVY = ("torch", "torchvision", "transformers", "PIL", "tqdm", "numpy")


def imported_in_a_fresh_interpreter(code: str) -> tuple[list[str], str]:
    """Run `code` in a new interpreter; (the heavy modules it imported, its stdout)."""
    probe = f"{code}\nimport sys\nprint('HEAVY', *sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    *out, last = done.stdout.rstrip("\n").split("\n")
    assert last.startswith("HEAVY"), done.stdout
    return last.split()[1:], "\n".join(out)


@pytest.mark.parametrize(
    "code",
    [
        "import glipv2; glipv2.__version__; dir(glipv2)",
        "import glipv2.cli as c; c.build_parser()",
        "import glipv2.cli as c; c.build_parser().format_help()",
        "import glipv2.modeling as m, glipv2.modeling.registry as r; r.describe_model(m.list_models()[0])",
    ]
    # every sub-command's --help: its module is imported and its arguments added, still without torch
    + [
        f"import glipv2.cli as c; c.build_parser()._subparsers._group_actions[0].choices[{name!r}].format_help()"
        for name in ("predict", "convert", "data", "train", "eval", "serve", "demo", "models")
    ],
)
def test_light_paths_import_no_heavy_library(code: str) -> None:
    heavy, _ = imported_in_a_fresh_interpreter(code)
    assert heavy == []


def test_glipv2_models_lists_presets_and_shipped_models_without_torch() -> None:
    from glipv2.utils.shipped import list_shipped_models

    heavy, printed = imported_in_a_fresh_interpreter("import glipv2.cli as c; c.main(['models'])")
    assert heavy == []
    for name in glipv2.list_models():
        assert f"  {name} " in printed
    assert "RANDOM weights" in printed and "trained weights" in printed
    for name in list_shipped_models():
        [line] = [line for line in printed.splitlines() if line.strip().startswith(f"{name} ")]
        assert "TRAINED weights" in line


def test_the_lazy_help_lines_are_the_commands_own() -> None:
    """`glipv2 --help` lists each command with a help line kept in cli.py (showing it must not import
    the command); it is the one the command's own `add_*_parser` gives."""
    for name, (module, function, help_text) in cli.LAZY_COMMANDS.items():
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        getattr(importlib.import_module(module, "glipv2"), function)(sub)
        [action] = [a for a in sub._choices_actions if a.dest == name]
        assert action.help == help_text, name


def test_a_command_is_filled_in_when_parsed(capsys: pytest.CaptureFixture[str]) -> None:
    from glipv2.inference.command import run_predict

    parser = cli.build_parser()
    assert {"models", "demo", "predict", "convert", "data", "train", "eval", "serve"} <= set(
        parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    )
    args = parser.parse_args(["predict", "a.png", "--model", "m", "--classes", "a,b", "--out", "o.json"])
    assert args.func is run_predict and args.threshold is None and not args.quiet
    with pytest.raises(SystemExit) as stop:
        cli.main(["predict", "--help"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: glipv2 predict") and "--quiet" in printed and "--question" in printed
    with pytest.raises(SystemExit) as stop:
        cli.main(["data", "shapes", "--no-such-option"])
    assert stop.value.code == 2


@pytest.mark.parametrize(
    "package",
    [
        "glipv2",
        "glipv2.modeling",
        "glipv2.inference",
        "glipv2.engine",
        "glipv2.evaluation",
        "glipv2.convert",
        "glipv2.data",
    ],
)
def test_every_lazy_name_is_exported_and_resolves(package: str) -> None:
    module = importlib.import_module(package)
    lazy = module._LAZY  # type: ignore[attr-defined]
    assert set(module.__all__) - {"__version__"} == set(lazy)
    assert set(module.__all__) <= set(dir(module))
    for name in module.__all__:
        assert getattr(module, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope  # noqa: B018


def test_subpackages_stay_reachable_as_attributes() -> None:
    _, printed = imported_in_a_fresh_interpreter(
        "import glipv2; print(glipv2.processing.image_to_tensor.__name__, glipv2.utils.shipped.__name__)"
    )
    assert printed == "image_to_tensor glipv2.utils.shipped"
