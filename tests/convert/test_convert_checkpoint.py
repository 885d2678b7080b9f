"""`convert_checkpoint`: official `.pth` -> model folder, on the parity fixture's tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from glipv2 import GLIPv2, GLIPv2Config, GLIPv2Processor
from glipv2.convert import (
    ConversionError,
    build_shape_model,
    config_from_official_yaml,
    convert_checkpoint,
    load_official_checkpoint,
    ours_to_official,
    write_safetensors,
)
from glipv2.convert import checkpoint as checkpoint_module
from glipv2.modeling.config import BERT_BASE_UNCASED_CONFIG
from glipv2.modeling.glipv2 import load_state_dict_strict

ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def yaml_config(fixture_dir: Path) -> GLIPv2Config:
    """The fixture's config as derived from its official YAML and BERT config."""
    return config_from_official_yaml(
        fixture_dir / "config_full.yaml", text_config=fixture_dir / "tiny_bert_config.json"
    )


@pytest.fixture(scope="module")
def official(fixture_dir: Path) -> dict[str, torch.Tensor]:
    return load_official_checkpoint(fixture_dir / "glip_tiny_random.pth")


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], **extras: Any) -> Path:
    torch.save({"model": state, **extras}, path)
    return path


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir())


# --- end to end -----------------------------------------------------------------------------------
def test_fixture_converts_loads_and_matches_official_logits(
    fixture_dir: Path, yaml_config: GLIPv2Config, fixture_outputs: dict[str, Any], tmp_path: Path
) -> None:
    """Official YAML + BERT config -> folder -> `from_pretrained` -> the official region-word logits."""
    out = tmp_path / "glip_tiny"
    report = convert_checkpoint(fixture_dir / "glip_tiny_random.pth", out, yaml_config)
    assert report.problems() == [] and report.ignored == []
    assert len(report.converted) == 300 and len(report.derived) == 13  # 8 Swin blocks + 5 anchor levels
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "conversion.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer",
    ]
    assert siblings(out) == ["glip_tiny"]  # the temporary folder was renamed, not copied
    provenance = json.loads((out / "conversion.json").read_text())
    assert provenance["source"] == "glip_tiny_random.pth" and provenance["converted"] == 300

    model = GLIPv2.from_pretrained(out)
    assert model.config == yaml_config
    tokenizer = GLIPv2Processor.for_model(model).tokenizer  # the processor saved in the folder
    tokens = tokenizer(fixture_outputs["caption"], padding="max_length", max_length=256, return_tensors="pt")
    with torch.no_grad():
        output = model(fixture_outputs["image_tensor"], tokens["input_ids"], tokens["attention_mask"])
    assert len(output.logits) == len(fixture_outputs["dot_product_logits"]) == 5
    real = tokens["attention_mask"][0].bool()  # the default fast path leaves pad slots undefined
    for ours, theirs in zip(output.logits, fixture_outputs["dot_product_logits"]):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours[..., real], theirs.float()[..., real], atol=ATOL, rtol=RTOL)


def test_weights_file_holds_the_official_tensors(
    fixture_dir: Path, yaml_config: GLIPv2Config, official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    convert_checkpoint(fixture_dir / "glip_tiny_random.pth", tmp_path / "out", yaml_config)
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert set(weights) == set(build_shape_model(yaml_config).state_dict())
    for key, tensor in weights.items():
        assert torch.equal(tensor, official[ours_to_official(key, yaml_config)]), key


# --- what released files may carry ------------------------------------------------------------------
def test_extras_of_released_files_are_tolerated(
    fixture_dir: Path, yaml_config: GLIPv2Config, official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """Optimizer / scheduler / iteration entries and an EMA copy at the top level, position_ids and
    a pooler in the model: converted from "model", the extras reported as ignored."""
    state = dict(official)
    hidden = yaml_config.text_hidden_size
    extras = {
        "module.language_backbone.body.model.embeddings.position_ids": torch.arange(512).unsqueeze(0),
        "module.language_backbone.body.model.pooler.dense.weight": torch.zeros(hidden, hidden),
        "module.language_backbone.body.model.pooler.dense.bias": torch.zeros(hidden),
    }
    state.update(extras)
    ema = {k: torch.zeros_like(v) for k, v in official.items()}
    src = save_checkpoint(
        tmp_path / "released.pth",
        state,
        model_ema=ema,
        iteration=90000,
        optimizer={"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-4}]},
        scheduler={"last_epoch": 90000, "base_lrs": [1e-4]},
    )
    report = convert_checkpoint(src, tmp_path / "out", yaml_config)
    assert sorted(report.ignored) == sorted(extras) and report.problems() == []
    weights = load_file(tmp_path / "out" / "model.safetensors")
    key = "heads.grounding.bbox_pred.weight"  # random in "model", zeros in the EMA copy
    assert (
        torch.equal(weights[key], official["module.rpn.head.bbox_pred.weight"])
        and weights[key].abs().sum() > 0
    )


def test_legacy_serialization_is_read(
    yaml_config: GLIPv2Config, official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """Files from torch < 1.6 (not zip, cannot be memory-mapped) are read whole."""
    src = tmp_path / "legacy.pth"
    torch.save({"model": dict(official)}, src, _use_new_zipfile_serialization=False)
    assert convert_checkpoint(src, tmp_path / "out", yaml_config).problems() == []


# --- refusals -----------------------------------------------------------------------------------------
def test_unknown_and_missing_keys_are_refused(
    yaml_config: GLIPv2Config, official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    state = dict(official)
    del state["module.rpn.head.centerness.weight"]
    state["module.rpn.head.contrastive_align_projection_image.weight"] = torch.zeros(64, 64)
    state["module.rpn.head.bbox_pred.weight"] = torch.zeros(4, 32, 1, 1)
    src = save_checkpoint(tmp_path / "bad.pth", state)
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(src, out, yaml_config)
    assert info.value.problems == [
        "unmapped: module.rpn.head.contrastive_align_projection_image.weight",
        "mismatch: module.rpn.head.bbox_pred.weight (4, 32, 1, 1) -> heads.grounding.bbox_pred.weight "
        "(4, 64, 1, 1)",
        "missing: heads.grounding.bbox_pred.weight",
        "missing: heads.grounding.centerness.weight",
    ]
    assert "bad.pth" in str(info.value)
    assert siblings(out) == ["bad.pth"]  # nothing written, no temporary left over


def test_bert_mismatch_says_to_pass_the_text_config(
    fixture_dir: Path, yaml_config: GLIPv2Config, tmp_path: Path
) -> None:
    """A config with bert-base's architecture for the fixture's 64-wide BERT fails, and the last
    line describes both BERTs and names the option."""
    config = yaml_config.replace(text_encoder=dict(BERT_BASE_UNCASED_CONFIG))
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(fixture_dir / "glip_tiny_random.pth", tmp_path / "out", config)
    hint = info.value.problems[-1]
    assert hint.startswith("hint: the checkpoint's BERT does not match")
    assert "hidden 768, 12 layers" in hint and "checkpoint: vocab 30522, hidden 64, 2 layers, FFN 256" in hint
    assert "--text-config" in hint


def test_allow_partial_keeps_initial_values_for_what_is_missing(
    yaml_config: GLIPv2Config, official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    state = dict(official)
    del state["module.rpn.head.centerness.weight"], state["module.rpn.head.centerness.bias"]
    src = save_checkpoint(tmp_path / "partial.pth", state)
    report = convert_checkpoint(src, tmp_path / "out", yaml_config, allow_partial=True)
    assert report.missing == ["heads.grounding.centerness.bias", "heads.grounding.centerness.weight"]
    model = GLIPv2.from_pretrained(tmp_path / "out")
    head = model.heads["grounding"]
    assert torch.equal(head.centerness.bias, torch.zeros(1))  # the head's own init
    assert torch.equal(head.bbox_pred.weight, official["module.rpn.head.bbox_pred.weight"])
    recorded = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert recorded["left_at_initialisation"] == report.missing


def test_existing_folder_is_kept_unless_overwrite(
    fixture_dir: Path, yaml_config: GLIPv2Config, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    src = fixture_dir / "glip_tiny_random.pth"
    with pytest.raises(ValueError, match="already exists"):
        convert_checkpoint(src, out, yaml_config)
    assert (out / "mine.txt").read_text() == "keep"
    # issue 25: overwrite replaces only a glipv2 model folder, never unrelated files
    with pytest.raises(ValueError, match="not a glipv2 model folder"):
        convert_checkpoint(src, out, yaml_config, overwrite=True)
    assert (out / "mine.txt").read_text() == "keep"
    (out / "mine.txt").unlink()
    convert_checkpoint(src, out, yaml_config, overwrite=True)  # an empty folder, then a model folder
    convert_checkpoint(src, out, yaml_config, overwrite=True)
    assert (out / "model.safetensors").is_file() and siblings(out) == ["out"]


def test_a_crash_while_writing_leaves_no_folder(
    fixture_dir: Path, yaml_config: GLIPv2Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "write_safetensors", crash)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(fixture_dir / "glip_tiny_random.pth", out, yaml_config)
    assert list(tmp_path.iterdir()) == []


def test_missing_source_file(yaml_config: GLIPv2Config, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="absent.pth: no such file"):
        convert_checkpoint(tmp_path / "absent.pth", tmp_path / "out", yaml_config)


# --- building blocks ------------------------------------------------------------------------------------
def test_shape_model_has_meta_parameters_and_real_derived_buffers(yaml_config: GLIPv2Config) -> None:
    shape_model, real = build_shape_model(yaml_config), GLIPv2(yaml_config)
    assert all(p.device.type == "meta" for p in shape_model.parameters())
    assert {k: (v.shape, v.dtype) for k, v in shape_model.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in real.state_dict().items()
    }
    real_buffers = dict(real.named_buffers())
    for name, buffer in shape_model.named_buffers():
        assert torch.equal(buffer, real_buffers[name]), name
    # parameters are back on the CPU for modules built afterwards
    assert all(p.device.type == "cpu" for p in torch.nn.Linear(2, 2).parameters())
    # and the shape model loads a state dict strictly, like the real one
    load_state_dict_strict(
        shape_model, {k: torch.empty(v.shape, device="meta") for k, v in real.state_dict().items()}
    )


def test_write_safetensors_round_trips_every_dtype(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "f64": torch.randn(1, generator=g).double(),
        "i64": torch.arange(10).reshape(2, 5),
        "i32": torch.arange(3, dtype=torch.int32),
        "u8": torch.arange(5, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(4, 6, generator=g).t(),
    }
    write_safetensors(tmp_path / "x.safetensors", tensors, metadata={"k": "v"})
    loaded = load_file(tmp_path / "x.safetensors")
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    header_size = int.from_bytes((tmp_path / "x.safetensors").read_bytes()[:8], "little")
    assert header_size % 8 == 0
