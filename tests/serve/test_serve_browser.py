"""`glipv2 serve` in a real browser: the server started as a user starts it, headless Chromium
(Debian's, driven by Playwright) uploading an image and running every mode, and what the page shows
checked against the same model run in this process.

Needs /usr/bin/chromium (or `GLIPV2_CHROMIUM`); `make test` installs it when it can. Without it
the test is skipped with the reason — and fails under CI. `GLIPV2_SCREENSHOTS=DIR` keeps a
screenshot of each mode there as JPEG (the README's pictures: `docs/serve/`).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import skip_or_fail
from PIL import Image

from glipv2 import GLIPv2, Predictor
from glipv2.utils.shipped import DEFAULT_SHIPPED_MODEL, SHIPPED_WEIGHTS_DIR

pytest.importorskip("gradio")
from glipv2.serve.app import shapes_examples
from glipv2.serve.service import DemoService

CHROMIUM = os.environ.get("GLIPV2_CHROMIUM", "/usr/bin/chromium")
# the flags a closed network needs: without the background-networking ones Chromium keeps trying
# (and failing) to reach Google's servers at every start
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 180
RESULT_TIMEOUT_MS = 120_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("the browser test needs playwright (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        skip_or_fail(
            f"BROWSER TEST NOT RUN: no Chromium at {CHROMIUM} (apt-get install chromium, or set GLIPV2_CHROMIUM)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`glipv2 serve` on the shipped weights (its default model) at a free loopback port."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "glipv2.cli",
                "serve",
                "--port",
                str(port),
                "--examples",
                "3",  # the reference's three images: the page knows their prompts
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"glipv2 serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"glipv2 serve did not answer within {SERVER_START_S} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoService, list]:
    """The same model and modes in this process: what the page must show."""
    model = GLIPv2.from_pretrained(SHIPPED_WEIGHTS_DIR / DEFAULT_SHIPPED_MODEL)
    examples = shapes_examples(tmp_path_factory.mktemp("images"), count=3, seed=7)
    predictor = Predictor(model)
    # the page's sliders start at the threshold saved with the model, as `glipv2 serve` sets them
    return DemoService(predictor, DEFAULT_SHIPPED_MODEL, predictor.processor.box_threshold), examples


def _shot(page: object, name: str) -> None:
    folder = os.environ.get("GLIPV2_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        # the viewport (image, controls, result), as JPEG: ShapesWorld's noisy backgrounds make PNGs big
        page.screenshot(path=str(Path(folder) / f"{name}.jpg"), type="jpeg", quality=85)  # type: ignore[attr-defined]


def _run(page: object, button: str) -> str:
    """Click a mode's Run button; the page's one-line message once the result is in."""
    message = page.locator("#message p").first  # type: ignore[attr-defined]
    previous = message.inner_text() if message.count() else None
    page.locator(f"#{button}").click()  # type: ignore[attr-defined]
    try:
        page.wait_for_function(  # type: ignore[attr-defined]
            "([previous]) => { const p = document.querySelector('#message p');"
            " return p && p.innerText.trim() && p.innerText !== previous; }",
            arg=[previous],
            timeout=RESULT_TIMEOUT_MS,
        )
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: say what the page shows instead
        shown = message.inner_text() if message.count() else "(no message)"
        pytest.fail(f"{button}: no new result within {RESULT_TIMEOUT_MS // 1000} s; the page shows {shown!r}")
    return message.inner_text()


def _result_image(page: object) -> np.ndarray:
    """The annotated image as the page shows it, fetched from the server (PNG: lossless)."""
    src = page.locator("#image-out img").first.get_attribute("src")  # type: ignore[attr-defined]
    body = page.request.get(src).body()  # type: ignore[attr-defined]
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def _fill(page: object, element_id: str, text: str) -> None:
    """Type `text` into a textbox and leave it (the blur commits the value), as a user does — until
    it holds. A tab's widgets are set up when the tab is first shown, and under load (seen in a full
    CI run) a widget still being set up reset the text typed into it to its initial value, so the
    server was asked the example's question instead of ours."""
    selector = f"#{element_id} textarea, #{element_id} input"
    box = page.locator(selector).first  # type: ignore[attr-defined]
    # set up: every box this test types into starts with the first example's prompt
    page.wait_for_function(  # type: ignore[attr-defined]
        "([selector]) => { const b = document.querySelector(selector); return b && b.value !== ''; }",
        arg=[selector],
        timeout=RESULT_TIMEOUT_MS,
    )
    deadline = time.monotonic() + RESULT_TIMEOUT_MS / 1000
    while True:
        box.fill(text)
        box.blur()
        page.wait_for_timeout(500)  # type: ignore[attr-defined]  # long enough for a late reset to show
        if box.input_value() == text:
            return
        print(f"#{element_id}: reset to {box.input_value()!r} after typing; typing again")
        if time.monotonic() > deadline:
            pytest.fail(f"#{element_id}: the box shows {box.input_value()!r} after typing {text!r}")


def _download(page: object) -> dict:
    """The JSON download of the last request: what the server computed, and for which prompt."""
    href = page.locator("#download a").first.get_attribute("href")  # type: ignore[attr-defined]
    return json.loads(page.request.get(href).body())  # type: ignore[attr-defined]


def _table(page: object) -> list[list[str]]:
    """The result table's rows as shown (Gradio renders the cells as `cell-ROW-COLUMN` grid cells)."""
    rows = []
    while True:
        cells = page.locator(f"#table [data-testid^='cell-{len(rows)}-']")  # type: ignore[attr-defined]
        if not cells.count():
            return rows
        rows.append([c.strip() for c in cells.all_inner_texts()])


def test_every_mode_in_a_browser(browser: object, server: str, reference: tuple[DemoService, list]) -> None:
    service, examples = reference
    example = examples[2]  # four objects: a red triangle and three green ones
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.goto(server, wait_until="domcontentloaded")
    page.locator("#run-detection").wait_for(timeout=RESULT_TIMEOUT_MS)
    page.locator("#image-in input[type=file]").set_input_files(example.image)
    page.locator("#image-in img").first.wait_for(timeout=RESULT_TIMEOUT_MS)

    # detection: the boxes of this process's run, drawn into the image the page shows
    _fill(page, "classes", example.classes)
    message = _run(page, "run-detection")
    expected = service.detect(
        example.image, example.classes, service.default_threshold, one_label_per_box=True
    )
    assert "⚠" not in message and message == expected.message.replace("**", "")
    assert [row[0] for row in _table(page)] == [row[0] for row in expected.rows]
    shown = _result_image(page)
    assert shown.shape == np.asarray(expected.image).shape
    assert (shown == np.asarray(expected.image)).all()  # the page shows exactly the model's drawing
    assert (shown != np.asarray(Image.open(example.image).convert("RGB"))).any()  # boxes are drawn
    _shot(page, "detection")

    # grounding of the image's own caption and phrases
    page.get_by_role("tab", name="Grounding").click()
    _fill(page, "caption", example.caption)
    _fill(page, "phrases", example.phrases)
    message = _run(page, "run-grounding")
    expected = service.ground(example.image, example.caption, example.phrases, service.default_threshold)
    assert message == expected.message.replace("**", "")
    assert (_result_image(page) == np.asarray(expected.image)).all()
    _shot(page, "grounding")

    # instance segmentation: masks tinted in
    page.get_by_role("tab", name="Segmentation").click()
    _fill(page, "seg-prompt", example.classes)
    message = _run(page, "run-segmentation")
    expected = service.segment(example.image, "instance", example.classes, service.default_threshold)
    assert message == expected.message.replace("**", "")
    assert (_result_image(page) == np.asarray(expected.image)).all()
    _shot(page, "segmentation")

    # referring segmentation: the kind switch suggests the example's own expression; one region
    page.get_by_role("radio", name="referring (an expression)").check()
    page.wait_for_function(  # type: ignore[attr-defined]
        "([text]) => document.querySelector('#seg-prompt textarea').value === text",
        arg=[example.expression],
        timeout=RESULT_TIMEOUT_MS,
    )
    message = _run(page, "run-segmentation")
    expected = service.segment(example.image, "referring", example.expression, service.default_threshold)
    assert message == expected.message.replace("**", "")
    assert len(_download(page)["detections"]) <= 1
    _shot(page, "referring")

    # VQA: the answer this process gives
    page.get_by_role("tab", name="VQA").click()
    _fill(page, "question", example.question)
    message = _run(page, "run-vqa")
    assert _download(page)["question"] == example.question  # the server was asked what we typed
    best = service.predictor.answer(example.image, example.question, top_k=1)[0][0]
    assert message.startswith(f"Answer: {best} (score")
    assert _table(page)[0][0] == best
    _shot(page, "vqa")

    # captioning
    page.get_by_role("tab", name="Captioning").click()
    message = _run(page, "run-captioning")
    assert message == f"Caption: {service.predictor.caption(example.image)}"
    _shot(page, "captioning")

    # a file that is not an image: a sentence in the page, no stack trace
    bad = Path(example.image).parent / "notes.png"
    bad.write_bytes(b"this is not an image")
    page.close()
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.goto(server, wait_until="domcontentloaded")
    page.locator("#image-in input[type=file]").set_input_files(str(bad))
    message = _run(page, "run-detection")
    assert message.startswith("⚠️"), message
    _shot(page, "bad_upload")
    content = page.content()
    assert "Traceback" not in content and 'File "' not in content
    page.close()
