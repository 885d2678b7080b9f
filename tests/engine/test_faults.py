"""Faults during training (issue 25, item 7): ten SIGKILLs at random points of one short run —
between checkpoint writes and inside them — each resumed, end with the weights of an uninterrupted
run; a full disk and a read-only output folder give one clear line and leave the last good
checkpoint intact.

The full-disk and read-only-mount cases mount a tiny tmpfs / a read-only bind mount, which needs
root; without it the full-disk cases are skipped and the read-only ones use `chmod` instead."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from glipv2.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train_interrupts import train_args
from test_trainer import REPO, make_dataset, make_trainer, tiny_model

# A "zygote": imports torch and glipv2 once (5 s on a small CPU), then forks one training process per
# line read from stdin ("OUT KILL_IN_WRITE STDERR_FILE"); prints "pid PID", the child prints "ready"
# once its trainer is built, and the zygote "exit CODE" when it ends (-9 for SIGKILL). One thread per
# process (OMP_NUM_THREADS=1), so forking after importing torch is safe.
ZYGOTE = textwrap.dedent("""
    import io, os, signal, sys, traceback
    sys.path[:0] = [{tests!r}, {tests!r} + "/engine"]
    import torch
    from test_trainer import make_trainer, tiny_model
    from conftest import make_tiny_config

    def trial(out, kill_in_write):
        trainer = make_trainer(tiny_model(make_tiny_config), {data!r}, out, max_steps={steps},
                               checkpoint_every=1, ema_decay=0.9)
        if kill_in_write > 0:  # die inside the n-th checkpoint write, half of the file on disk
            real_save, calls = torch.save, [0]
            def half_a_save(obj, f, *args, **kwargs):
                calls[0] += 1
                if calls[0] < kill_in_write:
                    return real_save(obj, f, *args, **kwargs)
                buffer = io.BytesIO()
                real_save(obj, buffer)
                if isinstance(f, (str, os.PathLike)):
                    f = open(f, "wb")
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            torch.save = half_a_save
        print("ready", flush=True)
        trainer.train()
        torch.save(trainer.model.state_dict(), os.path.join(out, "final.pt"))

    for line in sys.stdin:
        out, kill_in_write, err = line.split()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
                trial(out, int(kill_in_write))
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print("pid", pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print("exit", -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status), flush=True)
""")

STEPS = 30
TRIALS = 10


class Zygote:
    """Runs training processes forked from one that imported everything already."""

    def __init__(self, script: Path, log: Path) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        # nothing here may hang the suite: after 10 minutes the zygote goes, and readline() ends
        self.watchdog = threading.Timer(600, self.process.kill)
        self.watchdog.start()

    def run(
        self, out: Path, err: Path, kill_in_write: int = 0, kill_after: float | None = None
    ) -> tuple[int, int]:
        """Train into `out`; SIGKILL it `kill_after` seconds after its trainer is built, or inside
        its `kill_in_write`-th checkpoint write. Returns its exit code (-9 for SIGKILL) and pid."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{out} {kill_in_write} {err}\n")
        self.process.stdin.flush()
        pid, ready, timer = None, False, None
        while True:
            line = self.process.stdout.readline()
            assert line, "the zygote died"
            kind, _, value = line.strip().partition(" ")
            if kind == "pid":
                pid = int(value)
            elif kind == "ready":
                ready = True
            elif kind == "exit":
                if timer is not None:
                    timer.cancel()
                assert pid is not None
                return int(value), pid
            if pid is not None and ready and kill_after is not None and timer is None:
                timer = threading.Timer(kill_after, os.kill, (pid, signal.SIGKILL))
                timer.start()

    def close(self) -> None:
        self.watchdog.cancel()
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()


def test_ten_sigkills_at_random_points_resume_to_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data")
    script = tmp_path / "zygote.py"
    script.write_text(ZYGOTE.format(tests=str(REPO / "tests"), data=str(tmp_path / "data"), steps=STEPS))
    zygote = Zygote(script, tmp_path / "zygote.log")
    try:
        straight = tmp_path / "straight"
        code, _ = zygote.run(straight, tmp_path / "straight.err")
        assert code == 0, (tmp_path / "straight.err").read_text()[-2000:]

        rng = random.Random(25)
        out = tmp_path / "killed"
        trials: list[dict[str, Any]] = []
        for trial in range(TRIALS):
            # even trials: a kill after a random delay (mostly between writes, sometimes inside one);
            # odd trials: a kill inside the 1st-3rd checkpoint write of the run, half a file written
            inside = rng.randint(1, 3) if trial % 2 else 0
            delay = rng.uniform(0.0, 1.0)
            err = tmp_path / f"trial{trial}.err"
            code, pid = zygote.run(out, err, inside, None if inside else delay)
            assert code == -signal.SIGKILL, (
                f"trial {trial} ended by itself ({code}): {err.read_text()[-2000:]}"
            )
            step = (
                torch.load(out / "last.pt", weights_only=False)["step"] if (out / "last.pt").exists() else 0
            )
            # this process's half-written checkpoint: the kill came during a write
            partial = list(out.glob(f".last.pt.{pid}.*.tmp")) if out.exists() else []
            trials.append(
                {
                    "trial": trial,
                    "kill": f"inside write {inside}" if inside else f"after {delay:.3f} s",
                    "died_writing": bool(partial),
                    "checkpoint_step": step,
                }
            )
            if inside:
                assert partial, f"trial {trial}: no half-written checkpoint left by the kill"
            if trial:
                # never a step back: the last good checkpoint survives
                assert step >= trials[-2]["checkpoint_step"]
        assert step < STEPS, trials  # every trial was killed before the end
        code, _ = zygote.run(out, tmp_path / "resumed.err")
        err_text = (tmp_path / "resumed.err").read_text()
        assert code == 0, err_text[-2000:]
        assert f"resuming from step {step} (data " in err_text
    finally:
        zygote.close()
    print("SIGKILL trials:", json.dumps(trials))
    a = torch.load(straight / "final.pt")
    b = torch.load(out / "final.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(out.glob(".last.pt.*.tmp"))  # the killed runs' temporary files are cleaned up
    # the log says each step once, as the uninterrupted run's
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))


# --- full disk, read-only folder ------------------------------------------------------------------
def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {done.stderr.strip()}")


@contextmanager
def tiny_disk(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes at `path` (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs (the full disk) needs root")
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` read-only: a read-only bind mount as root (root ignores permission bits), else chmod."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    _mount("--bind", str(path), str(path))
    try:
        done = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(path)], capture_output=True, text=True, check=False
        )
        if done.returncode:
            pytest.skip(f"remounting read-only is not permitted here: {done.stderr.strip()}")
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def cli_args(tiny_config: Any, tmp_path: Path, out: Path, **fields: Any) -> list[str]:
    data = tmp_path / "data"
    make_dataset(data)
    model = tmp_path / "start"
    if not (model / "config.json").is_file():
        tiny_model(tiny_config).save_pretrained(model)
    config = tmp_path / "train.json"
    recipe = {"batch_size": 2, "min_sizes": [64], "max_size": 96, "warmup_steps": 1, "log_every": 1}
    config.write_text(json.dumps({**recipe, **fields}))
    return train_args(model, data, out, config)


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("glipv2 train:")]


def test_a_disk_that_fills_up_stops_with_one_line_and_keeps_the_last_checkpoint(
    tiny_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the size of one checkpoint, from a run on the normal disk
    assert main(cli_args(tiny_config, tmp_path, tmp_path / "probe", max_steps=1)) == 0
    size = (tmp_path / "probe" / "last.pt").stat().st_size
    capsys.readouterr()
    # room for one checkpoint and a half: the first is written, the second (beside it) is not
    with tiny_disk(tmp_path / "disk", int(size * 1.5)) as disk:
        out = disk / "run"
        code = main(cli_args(tiny_config, tmp_path, out, max_steps=3, checkpoint_every=1))
        err = capsys.readouterr().err
        assert code == 1, err[-2000:]
        [line] = error_lines(err)
        assert line.startswith("glipv2 train: cannot write the checkpoint of step 2 to ")
        assert "No space left on device" in line and f"{out / 'last.pt'} (step 1), is intact" in line
        assert torch.load(out / "last.pt", weights_only=False)["step"] == 1
        assert not list(out.glob(".last.pt.*"))  # the partial write was removed


def test_a_disk_without_room_for_a_checkpoint_is_refused_before_the_first_step(
    tiny_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tiny_disk(tmp_path / "disk", 1 << 20) as disk:  # 1 MiB; a checkpoint is ~20 MB
        out = disk / "run"
        code = main(cli_args(tiny_config, tmp_path, out, max_steps=1))
        err = capsys.readouterr().err
        assert code == 2, err[-2000:]
        [line] = error_lines(err)
        assert "MB free, a checkpoint needs about" in line
        assert not out.exists() or not any(out.iterdir())  # nothing written


def test_a_read_only_output_folder_is_refused_before_any_work(
    tiny_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(cli_args(tiny_config, tmp_path, out, max_steps=1)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    with read_only(out):
        code = main(cli_args(tiny_config, tmp_path, out, max_steps=2))
        err = capsys.readouterr().err
        assert code == 2, err[-2000:]
        [line] = error_lines(err)
        assert line.startswith(f"glipv2 train: --out {out}: cannot write there (")
        assert "Read-only file system" in line or "Permission denied" in line
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_folder_made_read_only_mid_run_stops_with_the_last_checkpoint_intact(
    tiny_config: Any, tmp_path: Path
) -> None:
    from glipv2.engine.trainer import TrainingStopped

    trainer = make_trainer(
        tiny_model(tiny_config),
        tmp_path / "data",
        tmp_path / "run",
        max_steps=3,
        checkpoint_every=1,
        log_every=100,
    )
    real_step = trainer.train_step
    saved: list[bytes] = []
    with ExitStack() as locks:

        def step_then_lock(batches: Any) -> Any:
            if trainer.step == 1 and not saved:  # after the step-1 checkpoint, before step 2
                saved.append(trainer.checkpoint_path.read_bytes())
                locks.enter_context(read_only(trainer.output_dir))
            return real_step(batches)

        trainer.train_step = step_then_lock  # type: ignore[method-assign]
        with pytest.raises(TrainingStopped) as stopped:
            trainer.train()
    message = str(stopped.value)
    assert type(stopped.value).__name__ == "CheckpointWriteError"
    assert message.startswith("cannot write the checkpoint of step 2 to ")
    assert "Read-only file system" in message or "Permission denied" in message
    assert f"{trainer.checkpoint_path} (step 1), is intact" in message
    assert trainer.checkpoint_path.read_bytes() == saved[0]
