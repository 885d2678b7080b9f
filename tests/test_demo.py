"""`glipv2 demo`'s overview picture (`demo_out/overview.png`: one ShapesWorld image through all six
tasks, as labelled panels; the README shows the copy in docs/demo_overview.png) and its closing line on
how to start the web demo. The demo runs here on tiny random models (seconds); the trained demo on the
shipped weights runs in tests/test_packaging.py, from the installed wheel."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_config
from PIL import Image

import glipv2
from glipv2 import demo
from glipv2.cli import main
from glipv2.inference.detections import Detections
from glipv2.utils.shipped import SHIPPED_WEIGHTS_DIR

REPO = Path(__file__).resolve().parents[1]
TASKS = [
    "detection",
    "instance segmentation",
    "phrase grounding",
    "referring segmentation",
    "visual question answering",
    "captioning",
]
# three panel columns and their margins: the width the picture is drawn at
OVERVIEW_WIDTH = (
    demo.OVERVIEW_COLUMNS * (demo.OVERVIEW_PANEL + 2 * demo.OVERVIEW_MARGIN) + demo.OVERVIEW_MARGIN
)


@pytest.fixture(scope="module")
def all_heads_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model with every head (masks, VQA, captions), saved with its processor."""
    torch.manual_seed(0)
    config = make_tiny_config(
        pad_to_max_query_len=False,
        mask_head=True,
        vqa_answers=("yes", "no", "2", "red"),
        caption_head=True,
        test_min_size=64,
        test_max_size=96,
    )
    folder = tmp_path_factory.mktemp("all_heads")
    glipv2.GLIPv2(config).eval().save_pretrained(folder)
    glipv2.GLIPv2Processor.from_config(config).save_pretrained(folder)
    return folder


def _texts(result: dict) -> dict[str, str]:
    return {p["task"]: "\n".join(p["text"]) for p in result["overview"]["panels"]}


def test_the_demo_draws_one_of_its_images_through_the_six_tasks_and_names_the_web_demo(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, all_heads_model_dir: Path
) -> None:
    out = tmp_path / "out"
    result = demo.run_demo(weights=all_heads_model_dir, out=out)
    overview = result["overview"]
    assert overview["file"] == out / "overview.png"
    assert overview["image"] in {Path(e["file"]).name for e in result["detection"]["images"]}
    assert [p["task"] for p in overview["panels"]] == TASKS
    texts = _texts(result)
    assert "36 colour + shape names" in texts["detection"] and "truth:" in texts["detection"]
    assert "caption:" in texts["phrase grounding"]
    assert "expression:" in texts["referring segmentation"]
    assert (
        "question:" in texts["visual question answering"] and "answer:" in texts["visual question answering"]
    )
    assert "generated:" in texts["captioning"]
    assert (
        "no mask head" not in "".join(texts.values())
        and "no VQA head" not in texts["visual question answering"]
    )
    with Image.open(out / "overview.png") as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
        # three columns, two rows, at the width the README shows it (900-1200 px)
        assert picture.width == OVERVIEW_WIDTH and 900 <= picture.width <= 1200
        assert 2 * demo.OVERVIEW_PANEL < picture.height < 2 * picture.width
    printed = capsys.readouterr().out.strip().splitlines()
    assert f"all six tasks on {overview['image']} in one picture: {out / 'overview.png'}" == printed[-2]
    assert printed[-1] == demo.WEB_DEMO_HINT == "web demo: glipv2 serve   (or: make serve)"


def test_the_overview_says_which_heads_a_model_lacks(tmp_path: Path, understanding_model_dir: Path) -> None:
    # the conftest model answers and describes but has no mask head
    texts = _texts(demo.run_demo(weights=understanding_model_dir, out=tmp_path / "out"))
    assert "(this model has no mask head)" in texts["instance segmentation"]
    assert "(this model has no mask head)" in texts["referring segmentation"]
    assert "answer:" in texts["visual question answering"] and "generated:" in texts["captioning"]
    assert (tmp_path / "out" / "overview.png").is_file()


def test_the_random_weights_demo_also_ends_with_how_to_start_the_web_demo(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "SHIPPED_WEIGHTS", tmp_path / "none")
    assert main(["demo"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert "randomly initialised" in printed[-2] and printed[-1] == demo.WEB_DEMO_HINT


def test_a_folder_where_the_overview_goes_stops_the_demo_before_any_work(
    tmp_path: Path, understanding_model_dir: Path
) -> None:
    out = tmp_path / "out"
    (out / "overview.png").mkdir(parents=True)
    with pytest.raises(demo.DemoError, match="overview.png"):
        demo.run_demo(weights=understanding_model_dir, out=out)
    assert not (out / "detection.json").exists() and not (out / "shapes").exists()


def test_the_shipped_weights_are_the_demo_default() -> None:
    # tests/test_cli.py monkeypatches this attribute: it names the folder inside the package
    assert demo.SHIPPED_WEIGHTS == SHIPPED_WEIGHTS_DIR / "glipv2_tiny_shapes"


def _detections(masks: bool = True) -> Detections:
    boxes = torch.tensor([[10.0, 20.0, 60.0, 80.0], [100.0, 30.0, 150.0, 90.0]])
    mask = torch.zeros(2, 120, 200, dtype=torch.bool)
    mask[0, 20:80, 10:60] = True
    mask[1, 30:90, 100:150] = True
    return Detections(
        boxes,
        torch.tensor([0.9, 0.4]),
        torch.tensor([1, 0]),
        ["red circle", "blue square"],
        (120, 200),
        "red circle. blue square",
        mask if masks else None,
    )


def test_detections_come_back_whole_from_the_predict_json() -> None:
    found = _detections()
    entry = {"width": 200, "height": 120, "prompt": found.prompt, "detections": found.to_dict()}
    back = demo._from_json(entry, found.names)
    torch.testing.assert_close(back.boxes, found.boxes)
    torch.testing.assert_close(back.scores, found.scores)
    assert back.labels.tolist() == [1, 0] and back.names == found.names and back.image_size == (120, 200)
    assert back.masks is not None and torch.equal(back.masks, found.masks)
    empty = demo._from_json({"width": 200, "height": 120, "detections": []}, found.names)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.masks is None


def test_panels_fit_the_panel_width_with_and_without_masks() -> None:
    image = Image.new("RGB", (200, 120), (120, 120, 120))
    for found in (_detections(), _detections(masks=False), _detections()[torch.tensor([], dtype=torch.long)]):
        drawn = demo._annotated(image, found)
        assert abs(drawn.width - demo.OVERVIEW_PANEL) <= 1 and abs(drawn.height - 216) <= 1
    tall = demo._plain(Image.new("RGB", (100, 400)))
    assert tall.height == demo.OVERVIEW_PANEL and tall.width == 90


def test_the_grounding_panel_keeps_each_phrases_best_box() -> None:
    found = _detections(masks=False)
    found = Detections(
        torch.cat([found.boxes, found.boxes]),
        torch.tensor([0.9, 0.4, 0.5, 0.8]),
        torch.tensor([1, 0, 1, 0]),
        found.names,
        found.image_size,
    )
    best = demo._best_per_label(found)
    assert best.labels.tolist() == [1, 0]  # in the order they came, each its best
    torch.testing.assert_close(best.scores, torch.tensor([0.9, 0.8]))


def test_the_overview_shows_the_image_the_detections_agree_with_best() -> None:
    names = ["red circle", "blue square"]
    detections = {
        "images": [
            {"detections": [{"label": "red circle"}]},  # 1 of 2 objects
            {"detections": [{"label": "red circle"}, {"label": "blue square"}]},  # both
            {
                "detections": [{"label": "blue square"}]
            },  # both objects of one: ties with image 1, fewer objects
        ]
    }
    infos = [{"id": 1}, {"id": 2}, {"id": 3}]
    truth = {1: Counter(names), 2: Counter(names), 3: Counter(["blue square"])}
    assert demo._overview_image(detections, infos, truth) == 1
    assert demo._overview_image({"images": [{}, {}]}, infos[:2], {}) == 0  # nothing anywhere: the first


def test_the_box_iou_is_the_usual_one() -> None:
    assert demo._box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0)
    assert demo._box_iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    assert demo._box_iou([0, 0, 10, 10], [20, 20, 5, 5]) == 0.0


def test_the_readme_picture_is_a_demo_overview_at_readme_size() -> None:
    # docs/demo_overview.png is a copy of what `glipv2 demo` draws with the shipped weights
    with Image.open(REPO / "docs" / "demo_overview.png") as picture:
        assert picture.width == OVERVIEW_WIDTH and picture.height > demo.OVERVIEW_PANEL * 2
