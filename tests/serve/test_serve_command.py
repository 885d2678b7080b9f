"""`glipv2 serve`'s own errors: one line on stderr and exit code 2, before anything listens."""

from __future__ import annotations

import socket

import pytest

from glipv2.cli import main
from glipv2.utils.shipped import DEFAULT_SHIPPED_MODEL, SHIPPED_WEIGHTS_DIR

pytest.importorskip("gradio")

SHIPPED = str(SHIPPED_WEIGHTS_DIR / DEFAULT_SHIPPED_MODEL)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--threshold", "1.5"], "--threshold 1.5: must lie in [0, 1]"),
        (["--port", "70000"], "--port 70000: must lie in [0, 65535]"),
        (["--concurrency", "0"], "--concurrency 0: must lie in [1, 64]"),
        (["--examples", "-1"], "--examples -1: must lie in [0, 20]"),
        (["--model", "./no_such_model"], "--model ./no_such_model: no such model folder"),
    ],
)
def test_bad_options_are_one_line(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *options]) == 2
    err = capsys.readouterr().err
    assert err == f"glipv2 serve: {message}\n"


def test_a_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", SHIPPED, "--port", str(port), "--examples", "0"]) == 2
    err = capsys.readouterr().err
    assert err.endswith(
        f"glipv2 serve: cannot listen on 127.0.0.1:{port} (in use, or not this machine's address)\n"
    )
    assert "Traceback" not in err
