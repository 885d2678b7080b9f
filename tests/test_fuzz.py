"""Fuzzing sweep (issue 25, item 6): the readers of user input, fed random and mutated input, fail
only with the project's own clear errors — `ValueError` / `FileNotFoundError` with a message, or
exit status 2 with one `glipv2 predict:` line (argparse's usage error for a malformed command line).

Targets: the prompt builders and positive maps; the COCO and MDETR grounding json readers of
training (`build_grounding_dataset`) and evaluation (`coco_benchmark`, `flickr_benchmark`,
`refexp_benchmark`), the VQAv2 and captions readers (`VQADataset`, `CaptionDataset`), all seeded with
the json files ShapesWorld writes and mutated; the yacs config reader; the image reader (random
bytes, truncated and corrupted files of every format); `glipv2 predict`'s option parsing.

Size: the "ci" hypothesis profile of tests/conftest.py (50 examples per target, derandomized) in
`make test`; `GLIPV2_FUZZ=long` selects the "long" profile (2000 examples per target, or
GLIPV2_FUZZ_EXAMPLES)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from glipv2.processing import prompts
from glipv2.processing.processor import load_image

FUZZ = settings(settings.get_profile(os.environ.get("GLIPV2_FUZZ", "ci")))
CLEAR_ERRORS = (ValueError, FileNotFoundError)


@contextlib.contextmanager
def only_clear_errors() -> Iterator[None]:
    """Let a clear error (an allowed type, with a message) pass; anything else fails the example."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PromptWarning and library warnings are fine here
        try:
            yield
        except CLEAR_ERRORS as err:
            assert str(err).strip(), f"{type(err).__name__} without a message"


# --- shared strategies -------------------------------------------------------------------------------
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def mutate(document: Any, data: st.DataObject, rounds: int = 3) -> Any:
    """A deep copy of `document` with up to `rounds` random edits: a value replaced by random JSON
    (often of the wrong type), a key removed, a list emptied or an item duplicated."""
    document = copy.deepcopy(document)
    for _ in range(data.draw(st.integers(1, rounds))):
        parent, key = None, None
        node = document
        # walk down a random path
        while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
            key = data.draw(
                st.sampled_from(sorted(node, key=str) if isinstance(node, dict) else range(len(node)))
            )
            parent, node = node, node[key]
        action = data.draw(st.sampled_from(["replace", "delete", "empty", "duplicate"]))
        if parent is None:
            if action == "replace":
                document = data.draw(json_values)
            continue
        if action == "replace":
            parent[key] = data.draw(json_values)
        elif action == "delete":
            del parent[key]
        elif action == "empty" and isinstance(node, (dict, list)):
            node.clear()
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(node))
    return document


# --- prompts and positive maps ------------------------------------------------------------------------
names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)
words = st.text(st.sampled_from("ab cd.,;:!?-_()'\"\n\tÉé日本ᚠ🦜0123"), max_size=40)


@FUZZ
@given(class_names=st.lists(names | words, max_size=6), chunk=st.none() | st.integers(-1, 4))
def test_fuzz_detection_prompts(bert_tokenizer: Any, class_names: list[str], chunk: int | None) -> None:
    with only_clear_errors():
        chunks = prompts.chunk_class_names(class_names, bert_tokenizer, max_tokens=24, chunk_size=chunk)
        for c in chunks:
            enc = bert_tokenizer(c.prompt.text, return_offsets_mapping=True, return_tensors="pt")
            pm = c.prompt.positive_map(enc["offset_mapping"][0], enc["attention_mask"][0])
            assert pm.shape[0] == c.prompt.num_labels and bool(pm.any(dim=1).all())


@FUZZ
@given(
    caption=names | words,
    phrases=st.none() | st.lists(names | words, max_size=4) | names,
    spans=st.none() | st.lists(st.tuples(st.integers(-3, 45), st.integers(-3, 45)) | json_values, max_size=3),
)
def test_fuzz_grounding_prompts(bert_tokenizer: Any, caption: str, phrases: Any, spans: Any) -> None:
    with only_clear_errors():
        prompt = prompts.grounding_prompt(caption, phrases, spans)
        enc = bert_tokenizer(
            prompt.text, return_offsets_mapping=True, truncation=True, max_length=16, return_tensors="pt"
        )
        prompt.positive_map(enc["offset_mapping"][0], enc["attention_mask"][0])
        prompts.check_prompt_tokens(prompt, bert_tokenizer)


# --- json readers --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glipv2.data.shapes_world import generate_shapes_world

    out = tmp_path_factory.mktemp("shapes") / "world"
    generate_shapes_world(out, 2, seed=0, split="val")
    return out


def _json_file(directory: Path, name: str, document: Any, raw: bytes | None) -> Path:
    path = directory / name
    path.write_bytes(raw if raw is not None else json.dumps(document, allow_nan=True).encode())
    return path


def _read_every_sample(dataset: Any) -> None:
    for index in range(len(dataset)):
        dataset[index]


@FUZZ
@given(data=st.data(), raw=st.none() | st.binary(max_size=64), masks=st.booleans())
def test_fuzz_training_json_readers(
    shapes_dir: Path, data: st.DataObject, raw: bytes | None, masks: bool
) -> None:
    from glipv2.data.grounding import build_grounding_dataset

    source = data.draw(st.sampled_from(["instances.json", "grounding.json"]))
    document = mutate(json.loads((shapes_dir / source).read_text()), data)
    path = _json_file(shapes_dir, f"fuzz_train_{source}", document, raw)
    with only_clear_errors():
        kwargs = {"with_masks": masks} if source == "instances.json" else {}
        _read_every_sample(build_grounding_dataset(path, shapes_dir / "images", **kwargs))


def _fuzz_evaluation_reader(shapes_dir: Path, data: st.DataObject, raw: bytes | None, reader: str) -> None:
    from glipv2.evaluation.coco import coco_benchmark
    from glipv2.evaluation.grounding import flickr_benchmark, refexp_benchmark

    readers: dict[str, tuple[str, Callable[[Path, Path], Any]]] = {
        "coco": ("instances.json", lambda p, d: coco_benchmark(p, d, distributed=False)),
        "flickr": ("grounding.json", lambda p, d: flickr_benchmark(p, d, distributed=False)),
        "refexp": ("grounding.json", lambda p, d: refexp_benchmark(p, d, distributed=False)),
    }
    source, build = readers[reader]
    document = mutate(json.loads((shapes_dir / source).read_text()), data)
    path = _json_file(shapes_dir, f"fuzz_eval_{reader}.json", document, raw)
    with only_clear_errors():
        build(path, shapes_dir / "images").check_images()


@FUZZ
@given(data=st.data(), raw=st.none() | st.binary(max_size=64))
def test_fuzz_coco_evaluation_reader(shapes_dir: Path, data: st.DataObject, raw: bytes | None) -> None:
    _fuzz_evaluation_reader(shapes_dir, data, raw, "coco")


@pytest.mark.parametrize("reader", ["flickr", "refexp"])
@FUZZ
@given(data=st.data(), raw=st.none() | st.binary(max_size=64))
def test_fuzz_grounding_evaluation_readers(
    shapes_dir: Path, data: st.DataObject, raw: bytes | None, reader: str
) -> None:
    _fuzz_evaluation_reader(shapes_dir, data, raw, reader)


@pytest.mark.parametrize("key", ["images", "annotations"])
def test_grounding_evaluation_readers_refuse_a_field_that_is_not_a_list(tmp_path: Path, key: str) -> None:
    # found by the fuzzer: a TypeError deep in the Flickr / RefCOCO readers (fixed in read_annotations)
    from glipv2.evaluation.grounding import load_flickr, load_refexp

    document: dict[str, Any] = {"images": [], "annotations": [], key: {"0": 1}}
    path = tmp_path / "grounding.json"
    path.write_text(json.dumps(document))
    for load in (load_flickr, load_refexp):
        with pytest.raises(ValueError, match=f"{key} must be a list"):
            load(path)


def _read_first_sample_of_each_image(dataset: Any, image_of: Callable[[int], Any]) -> None:
    """Every distinct image once (loading is what varies; the records were all checked up front)."""
    seen: set[Any] = set()
    for index in range(len(dataset)):
        key = image_of(index)
        if key not in seen:
            seen.add(key)
            dataset[index]


@FUZZ
@given(data=st.data(), raw=st.none() | st.binary(max_size=64))
def test_fuzz_vqa_json_reader(shapes_dir: Path, data: st.DataObject, raw: bytes | None) -> None:
    # either file may be the mutated one (or raw bytes); the other stays as ShapesWorld wrote it
    from glipv2.data.vqa import VQADataset

    files = {name: shapes_dir / name for name in ("vqa_questions.json", "vqa_annotations.json")}
    source = data.draw(st.sampled_from(sorted(files)))
    document = mutate(json.loads(files[source].read_text()), data)
    files[source] = _json_file(shapes_dir, f"fuzz_{source}", document, raw)
    annotated = data.draw(st.booleans())
    with only_clear_errors():
        dataset = VQADataset(
            files["vqa_questions.json"],
            shapes_dir / "images",
            files["vqa_annotations.json"] if annotated else None,
        )
        assert len(dataset) == len(dataset.questions) == len(dataset.answer_lists())
        _read_first_sample_of_each_image(dataset, lambda i: dataset.questions[i]["image_id"])


@FUZZ
@given(data=st.data(), raw=st.none() | st.binary(max_size=64))
def test_fuzz_captions_json_reader(shapes_dir: Path, data: st.DataObject, raw: bytes | None) -> None:
    from glipv2.data.captions import CaptionDataset

    document = mutate(json.loads((shapes_dir / "captions.json").read_text()), data)
    path = _json_file(shapes_dir, "fuzz_captions.json", document, raw)
    with only_clear_errors():
        dataset = CaptionDataset(path, shapes_dir / "images")
        references = dataset.references()
        assert len(references) == len(dataset) and all(references.values())
        _read_first_sample_of_each_image(dataset, lambda i: i)


# --- yacs config reader ---------------------------------------------------------------------------------
FIXTURE_YAML = (
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "glip_parity_tiny" / "config_full.yaml"
)


@pytest.fixture(scope="module")
def official_yaml() -> dict[str, Any]:
    if FIXTURE_YAML.is_file():
        return yaml.safe_load(FIXTURE_YAML.read_text())
    return {"MODEL": {"META_ARCHITECTURE": "GeneralizedVLRCNN", "SWINT": {"EMBED_DIM": 96}}}


yaml_strings = st.sampled_from(
    ["(2, 2)", "[1, 'a']", "{[]: 1}", "False", "1e400", "((((", "None", "()", "-1"]
)


@FUZZ
@given(
    data=st.data(),
    raw=st.none()
    | st.binary(max_size=64)
    | st.text(st.sampled_from("MODEL:{}[]-, \n'\"&*!|>#%@`\t1a"), max_size=60),
    strings=st.lists(yaml_strings, max_size=3),
)
def test_fuzz_official_yaml(
    official_yaml: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
    raw: Any,
    strings: list[str],
) -> None:
    from glipv2.convert import config_from_official_yaml

    document = mutate(official_yaml, data, rounds=6)
    # yacs writes tuples as Python literals in strings: fuzz that parser too
    node = document.get("MODEL") if isinstance(document, dict) else None
    for i, value in enumerate(strings):
        if isinstance(node, dict):
            node[data.draw(st.sampled_from(sorted(node, key=str) or [f"K{i}"]))] = value
    path = tmp_path_factory.mktemp("yaml") / "config.yml"
    if raw is None:
        path.write_text(yaml.safe_dump(document))
    else:
        path.write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    text = data.draw(st.none() | st.just(FIXTURE_YAML.parent / "tiny_bert_config.json"))
    with only_clear_errors():
        config_from_official_yaml(path, text_config=text if text is None or text.is_file() else None)


# --- image reader ------------------------------------------------------------------------------------------
def _encoded(fmt: str, mode: str) -> bytes:
    pixels = np.random.RandomState(0).randint(0, 255, (12, 17, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    kwargs: dict[str, Any] = {"exif": exif.tobytes()} if fmt in ("JPEG", "PNG", "WEBP", "TIFF") else {}
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


VALID_FILES = [
    _encoded(fmt, mode)
    for fmt, mode in [
        ("PNG", "RGB"),
        ("PNG", "P"),
        ("PNG", "LA"),
        ("JPEG", "RGB"),
        ("JPEG", "CMYK"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
        ("TIFF", "F"),
        ("TIFF", "I;16"),
        ("WEBP", "RGB"),
        ("PPM", "RGB"),
        ("ICO", "RGB"),
    ]
]


@FUZZ
@given(
    base=st.sampled_from(VALID_FILES),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
    noise=st.binary(max_size=256),
    how=st.sampled_from(["truncate", "corrupt", "random", "header+random"]),
)
def test_fuzz_image_reader(
    tmp_path_factory: pytest.TempPathFactory, base: bytes, cut: float, flips: list, noise: bytes, how: str
) -> None:
    if how == "truncate":
        payload = base[: int(len(base) * cut)]
    elif how == "corrupt":
        buffer = bytearray(base)
        for where, value in flips:
            buffer[min(int(where * len(buffer)), len(buffer) - 1)] = value
        payload = bytes(buffer)
    elif how == "random":
        payload = noise
    else:
        payload = base[:16] + noise
    path = tmp_path_factory.mktemp("img") / "image.bin"
    path.write_bytes(payload)
    with only_clear_errors():
        image = load_image(path)
        assert image.mode == "RGB" and min(image.size) >= 1


# --- glipv2 predict's option parsing -----------------------------------------------------------------------
OPTION_VALUES = st.sampled_from(
    [
        "",
        "0",
        "-1",
        "1",
        "2",
        "0.5",
        "nan",
        "inf",
        "-0",
        "1e9",
        "64,96",
        "96,64",
        "0,0",
        "a,b",
        ",",
        "x",
        "--",
    ]
) | st.text(st.sampled_from("ab,.- 0123"), max_size=8)
OPTIONS = [
    "--classes",
    "--caption",
    "--phrases",
    "--threshold",
    "--size",
    "--chunk-size",
    "--batch-size",
    "--device",
]
FLAGS = ["--no-resize", "--one-label-per-box"]


@FUZZ
@given(
    task=st.tuples(st.sampled_from(["--classes", "--caption"]), OPTION_VALUES | words),
    options=st.lists(st.tuples(st.sampled_from(OPTIONS + FLAGS), OPTION_VALUES), max_size=4),
    images=st.lists(
        st.sampled_from(["good.png", "missing.png", "folder", "bad.png"]), min_size=1, max_size=3
    ),
    model=st.sampled_from(["tiny", "no/such/model/dir", ""]),
    out=st.sampled_from(["out.json", "out.json", "folder", "folder/out.json", "good.png", ""]),
)
def test_fuzz_predict_options(
    tiny_model: Any,
    tmp_path_factory: pytest.TempPathFactory,
    task: tuple[str, str],
    options: list[tuple[str, str]],
    images: list[str],
    model: str,
    out: str,
) -> None:
    from glipv2.inference.command import predict_main

    root = tmp_path_factory.mktemp("predict")
    (root / "folder").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "good.png")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    argv = ["predict", *[str(root / i) for i in images], "--model", model or "tiny"]
    for option, value in [task, *options]:
        argv.extend([option] if option in FLAGS else [option, value])
    if out:
        argv.extend(["--out", str(root / out)])

    def load_model(name: str, *args: Any, **kwargs: Any) -> Any:
        if name != "tiny":
            raise ValueError(f"{name}: no such model")
        return tiny_model

    stderr = io.StringIO()
    with (
        mock.patch("glipv2.loading.load_model", load_model),
        contextlib.redirect_stderr(stderr),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # PromptWarning for fuzzed class names
        try:
            status = predict_main(argv)
        except SystemExit as exit_:  # argparse: a malformed command line
            assert exit_.code == 2, argv
            assert "usage:" in stderr.getvalue()
            return
    assert status in (0, 2), (argv, status)
    lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
    # one-line errors, tqdm's progress bar ("predict:  50%|...") and the summary line
    problems = [line for line in lines if not line.startswith(("glipv2 predict: ", "predict:"))]
    assert all("image(s) processed" in line or "Warning" in line for line in problems), (argv, lines)
    assert "Traceback" not in stderr.getvalue()


# --- what the sweep found: each crash, pinned as a plain test ----------------------------------------------
@pytest.mark.parametrize("spans", [[[None]], [[]], [None], 5, [(1, True)], [[(0, 1), "ab"]]])
def test_found_malformed_spans_are_clear_errors(spans: Any) -> None:
    # found: TypeError / IndexError from grounding_prompt's span unpacking
    with pytest.raises(ValueError, match="span"):
        prompts.grounding_prompt("0 dogs", spans=spans)


COCO = {
    "images": [{"id": 1, "file_name": "a.png"}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}],
    "categories": [{"id": 1, "name": "box"}],
}


def _coco_file(tmp_path: Path, **changes: Any) -> Path:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({**COCO, **changes}, allow_nan=True))
    return path


@pytest.mark.parametrize(
    "changes",
    [
        {"annotations": None},  # found: TypeError, 'NoneType' object is not iterable
        {"categories": 7},
        {"images": {"0": {}}},  # found: KeyError 0 in build_grounding_dataset
        {"categories": [None]},  # found: TypeError, a category that is not an object
        {"categories": [{"id": 1}]},  # found: KeyError 'id' / 'name'
        {"categories": [{"id": float("inf"), "name": "box"}]},  # found: OverflowError
    ],
)
def test_found_malformed_training_json_is_a_clear_error(tmp_path: Path, changes: dict[str, Any]) -> None:
    from glipv2.data.grounding import build_grounding_dataset

    with pytest.raises(ValueError, match="ann.json"):
        build_grounding_dataset(_coco_file(tmp_path, **changes), tmp_path)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"annotations": [None, *COCO["annotations"]]}, "annotation without an integer or string image_id"),
        ({"annotations": [{"image_id": [1]}, *COCO["annotations"]]}, "annotation without"),  # unhashable id
        (
            {"annotations": [{"image_id": 1, "category_id": float("inf"), "bbox": [0, 0, 1, 1]}]},
            "box without bbox/category_id",  # found: OverflowError
        ),
    ],
)
def test_found_malformed_annotations_are_skipped_and_counted(
    tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    from glipv2.data.grounding import build_grounding_dataset

    dataset = build_grounding_dataset(_coco_file(tmp_path, **changes), tmp_path)
    dataset[0]
    assert any(k.startswith(reason) for k in dataset.skips.as_dict()), dataset.skips.as_dict()


@pytest.mark.parametrize("entry", [{"id": 1, "file_name": 5}, {"id": [1], "file_name": "a.png"}])
def test_found_malformed_image_entries_are_data_errors(tmp_path: Path, entry: dict[str, Any]) -> None:
    # found: TypeError from Path / 5, and an unhashable image id
    from glipv2.data.grounding import DataError, build_grounding_dataset

    with pytest.raises(DataError, match="image entry 0"):
        build_grounding_dataset(_coco_file(tmp_path, images=[entry]), tmp_path)[0]


@pytest.mark.parametrize("literal", ["{[]: 1}", "-" * 100000 + "1"])
def test_found_yacs_literals_are_clear_errors(
    official_yaml: dict[str, Any], tmp_path: Path, literal: str
) -> None:
    # found: TypeError (an unhashable key) and MemoryError (deep unary nesting) from ast.literal_eval
    from glipv2.convert import config_from_official_yaml

    document = copy.deepcopy(official_yaml)
    document.setdefault("MODEL", {}).setdefault("SWINT", {})["EMBED_DIM"] = literal
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ValueError, match="MODEL.SWINT.EMBED_DIM"):
        config_from_official_yaml(path)
