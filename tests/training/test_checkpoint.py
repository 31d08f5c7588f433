"""Checkpoints: safetensors round trip, evaluation mode, exact predictions, never unpickled."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from worker.training.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from worker.training.config import ExperimentConfig
from worker.training.datasets import DataSplits
from worker.training.model import MLP

from .support import make_config


def _trained(data: DataSplits, raw: dict[str, Any] | None = None) -> tuple[MLP, ExperimentConfig]:
    """A model after a few hand-run training steps (moving averages away from 0/1)."""
    cfg = make_config(raw)
    torch.manual_seed(0)
    model = MLP(cfg.model, data.n_features, data.n_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    model.train()
    for i in range(10):
        loss = F.cross_entropy(model(x[i * 50 : (i + 1) * 50]), y[i * 50 : (i + 1) * 50])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, cfg


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {
            "model": {
                "batch_norm": {"scale": True, "center": False, "placement": "after_activation"}
            }
        },
        {"model": {"batch_norm": {"enabled": False}, "hidden_layers": []}},
    ],
)
def test_round_trip_predicts_exactly_as_before(
    digits: DataSplits, tmp_path: Path, raw: dict | None
) -> None:
    model, cfg = _trained(digits, raw)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, cfg)
    model.eval()
    x = torch.from_numpy(digits.x_test)
    with torch.no_grad():
        before = model(x)
    loaded, loaded_cfg = load_checkpoint(path)
    assert loaded_cfg == cfg
    assert not loaded.training and not any(m.training for m in loaded.modules())
    with torch.no_grad():
        after = loaded(x)
    assert torch.equal(before, after)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_file_holds_every_parameter_and_bn_buffer_plus_the_config(
    digits: DataSplits, tmp_path: Path
) -> None:
    model, cfg = _trained(digits, {"model": {"batch_norm": {"scale": True}}})
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, cfg)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        metadata = f.metadata()
    expected = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    assert keys == expected
    assert {f"layers.{ly}.bn.running_var" for ly in ("hidden1", "hidden2", "outputs")} <= keys
    assert metadata["format"] == FORMAT
    assert json.loads(metadata["config"]) == json.loads(cfg.model_dump_json())
    assert (metadata["n_features"], metadata["n_classes"]) == ("64", "10")
    # safetensors: an 8-byte little-endian header length, then a JSON header. No pickle anywhere.
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    json.loads(raw[8 : 8 + header_len])
    assert b"\x80\x04" not in raw[:2]


def test_loading_onto_a_device_string(digits: DataSplits, tmp_path: Path) -> None:
    model, cfg = _trained(digits)
    save_checkpoint(tmp_path / "m.safetensors", model, cfg)
    loaded, _ = load_checkpoint(tmp_path / "m.safetensors", device="cpu")
    assert all(p.device.type == "cpu" for p in loaded.parameters())


def test_a_foreign_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a NormLab checkpoint"):
        load_checkpoint(path)


def test_overwrite_is_atomic_and_leaves_no_temp_files(digits: DataSplits, tmp_path: Path) -> None:
    model, cfg = _trained(digits)
    path = tmp_path / "deep" / "dir" / "model.safetensors"
    save_checkpoint(path, model, cfg)
    save_checkpoint(path, model, cfg)
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]
