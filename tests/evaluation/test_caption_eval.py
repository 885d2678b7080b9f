"""Caption metrics equal pycocoevalcap's scorers on PTB-tokenised captions, and `glipv2 eval caption`.

Each evaluation starts Java once (the PTB tokenizer): the tests keep those calls few."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from glipv2.cli import main
from glipv2.evaluation.caption import (
    CaptionEvaluator,
    java_executable,
    java_first_on_path,
    load_caption_references,
    read_caption_results,
)

REFERENCES = {
    1: ["A dog runs across the green grass.", "a brown dog running on grass", "The dog is playing outside!"],
    2: ["Two cats sleep on a red sofa.", "cats sleeping on the couch"],
    3: ["A man rides a bicycle down the street.", "a person riding a bike", "A cyclist on a city road."],
    4: ["A plate of food with broccoli.", "Broccoli and rice on a plate."],
}
CAPTIONS = {
    1: "A dog running on the grass.",
    2: "two cats sleeping on a sofa",
    3: "a man riding a bike on the street",
    4: "a plate with broccoli and rice",
}


def coco_captions() -> dict[str, Any]:
    return {
        "images": [{"id": i, "file_name": f"{i:06d}.jpg"} for i in REFERENCES],
        "annotations": [
            {"id": 10 * i + k, "image_id": i, "caption": c}
            for i, refs in REFERENCES.items()
            for k, c in enumerate(refs)
        ],
    }


@pytest.fixture(scope="module")
def direct() -> dict[str, float]:
    """pycocoevalcap called directly, as its COCOEvalCap does: tokenise, then score."""
    with java_first_on_path(java_executable()):
        gts = PTBTokenizer().tokenize({i: [{"caption": c} for c in refs] for i, refs in REFERENCES.items()})
        res = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in CAPTIONS.items()})
    cider, _ = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {"CIDEr": cider, **{f"BLEU-{n + 1}": b for n, b in enumerate(bleu)}}


def test_scores_equal_pycocoevalcap(direct: dict[str, float]) -> None:
    evaluator = CaptionEvaluator(coco_captions())
    evaluator.process([{"image_id": i, "caption": c} for i, c in CAPTIONS.items()])
    metrics = evaluator.evaluate()["caption"]
    for name, value in direct.items():
        assert metrics[name] == pytest.approx(value, abs=1e-9), name
    assert 0.0 < metrics["BLEU-4"] < metrics["BLEU-1"] <= 1.0 and metrics["CIDEr"] > 0.0
    assert (metrics["num_images"], metrics["num_missing"]) == (4, 0)


def test_references_and_predictions_are_checked(tmp_path: Path) -> None:
    refs, names = load_caption_references(coco_captions())
    assert refs == REFERENCES and names[3] == "000003.jpg"
    assert load_caption_references({"1": ["a b"], 2: ["c"]})[0] == {1: ["a b"], 2: ["c"]}  # JSON keys
    evaluator = CaptionEvaluator(REFERENCES)
    with pytest.raises(ValueError, match="no reference"):
        evaluator.process([{"image_id": 9, "caption": "x"}])
    evaluator.process([{"image_id": 1, "caption": "x"}])
    with pytest.raises(ValueError, match="second"):
        evaluator.process([{"image_id": 1, "caption": "y"}])
    with pytest.raises(ValueError, match="annotation 0"):
        load_caption_references({"annotations": [{"image_id": 1}]})
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"image_id": 1, "caption": 3}]))
    with pytest.raises(ValueError, match="prediction 0"):
        read_caption_results(path)


def test_eval_caption_command(
    tmp_path: Path, direct: dict[str, float], capsys: pytest.CaptureFixture[str]
) -> None:
    ann = tmp_path / "captions.json"
    ann.write_text(json.dumps(coco_captions()))
    results = [{"image_id": i, "caption": c} for i, c in CAPTIONS.items()]
    predictions = tmp_path / "results.json"
    predictions.write_text(json.dumps(results))
    out = tmp_path / "metrics.json"
    args = ["eval", "caption", "--predictions", str(predictions), "--ann", str(ann)]
    assert main([*args, "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert list(metrics) == ["caption"]
    for name, value in direct.items():
        assert metrics["caption"][name] == pytest.approx(value, abs=1e-9), name
    assert metrics["caption"]["num_images"] == 4
    assert json.loads((tmp_path / "metrics_predictions.json").read_text()) == results
    assert "CIDEr" in capsys.readouterr().out

    # bad input (before any Java call): one line on stderr, exit 2
    predictions.write_text(json.dumps([{"image_id": 7, "caption": "a cat"}]))
    assert main([*args, "--out", str(tmp_path / "m2.json")]) == 2
    err = capsys.readouterr().err
    assert "image 7" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--out", str(ann)]) == 2  # would overwrite the annotations
    assert main([*args, "--top-k", "2", "--out", str(out)]) == 2  # a vqa option
    assert main([*args, "--beam-size", "2", "--out", str(out)]) == 2  # a --model option
