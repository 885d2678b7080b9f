"""One `Predictor` shared by threads (a web server's workers) gives each call what it gives alone,
and a call's own post-processing never leaks into another's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from glipv2.processing.postprocess import PostProcessor


def test_concurrent_calls_equal_sequential_ones(make_predictor: Any, random_image: Any) -> None:
    predictor = make_predictor(text_cache_size=2)  # a small cache: threads evict each other's entries
    images = [random_image(seed) for seed in range(6)]
    vocabularies = [["cat", "dog"], ["red circle", "blue square"], ["person"]]
    jobs = [(images[i], vocabularies[i % 3]) for i in range(6)] * 3
    alone = [predictor.detect(image, names, threshold=0.0) for image, names in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        shared = list(pool.map(lambda job: predictor.detect(job[0], job[1], threshold=0.0), jobs))
    for a, b in zip(alone, shared):
        assert a.label_names == b.label_names
        assert torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.boxes, b.boxes)
        torch.testing.assert_close(a.scores, b.scores)


def test_a_calls_postprocessor_changes_only_that_call(make_predictor: Any, random_image: Any) -> None:
    predictor = make_predictor()
    default = predictor.postprocessor
    image = random_image(0)
    vocabulary = [predictor.detection_vocabulary(["cat", "dog"])]
    capped = predictor.predict(
        [image],
        vocabulary,
        threshold=0.0,
        postprocessor=PostProcessor(inference_threshold=0.0, detections_per_image=3),
    )[0]
    full = predictor.predict([image], vocabulary, threshold=0.0)[0]
    assert len(capped) == 3 < len(full)
    assert predictor.postprocessor is default and default.detections_per_image == 100
