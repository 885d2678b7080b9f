"""Reading official `.pth` files safely."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from glipv2.convert import load_official_checkpoint


class Unpicklable:
    """A stand-in for non-tensor extras that only full unpickling can restore."""


def test_reads_model_key_and_bare_state_dicts(tmp_path: Path) -> None:
    state = {"module.rpn.head.bias0": torch.tensor([1.5])}
    torch.save({"model": state, "iteration": 7}, tmp_path / "wrapped.pth")
    torch.save(state, tmp_path / "bare.pth")
    for name in ("wrapped.pth", "bare.pth"):
        loaded = load_official_checkpoint(tmp_path / name)
        assert list(loaded) == ["module.rpn.head.bias0"]
        assert torch.equal(loaded["module.rpn.head.bias0"], state["module.rpn.head.bias0"])


def test_refuses_full_unpickling_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "extras.pth"
    torch.save({"model": collections.OrderedDict(w=torch.zeros(2)), "optimizer": Unpicklable()}, path)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_official_checkpoint(path)
    assert torch.equal(load_official_checkpoint(path, allow_pickle=True)["w"], torch.zeros(2))


def test_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a GLIP checkpoint"):
        load_official_checkpoint(tmp_path / "list.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a zip or pickle")
    with pytest.raises(ValueError):
        load_official_checkpoint(tmp_path / "garbage.pth")
