"""The exported file: tensor names, metadata, and the documented numpy predictor."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from worker.training.checkpoint import load_checkpoint, save_checkpoint
from worker.training.config import DatasetConfig
from worker.training.datasets import DataSplits, load_dataset
from worker.training.export import MissingStandardizationError, export_model
from worker.training.model import MLP

from .support import make_config, run

DOC = Path(__file__).resolve().parents[2] / "docs" / "export.md"


def documented_predictor() -> Any:
    """The ``predict`` function of docs/export.md, exactly as printed there."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- predictor -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, "docs/export.md lost its predictor block"
    code = match.group(1)
    body = [ln for ln in code.splitlines() if ln.strip() and not ln.startswith(("import", "from"))]
    assert len(body) <= 12  # def + ten lines of numpy (one wrapped)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace["predict"]


@pytest.fixture(scope="module")
def raw_digits() -> DataSplits:
    """The same split as the ``digits`` fixture, without standardization (what a user holds)."""
    return load_dataset(DatasetConfig(name="digits", standardize=False), seed=0)


@pytest.mark.parametrize(("activation", "placement"), [
    ("elu", "before_activation"), ("relu", "after_activation"), ("tanh", "before_activation")])
def test_the_numpy_predictor_reproduces_the_test_accuracy(
    tmp_path: Path, digits: DataSplits, raw_digits: DataSplits, activation: str, placement: str
) -> None:
    config = make_config({
        "model": {"activation": activation, "batch_norm": {"placement": placement, "scale": True}},
        "optimizer": {"name": "momentum", "learning_rate": 0.05},
        "training": {"measure_prediction_cost": False},
    })
    checkpoint = tmp_path / "ckpt.safetensors"
    summary = run(config, digits, checkpoint_path=checkpoint).result.summary
    target = tmp_path / "model.safetensors"
    export_model(checkpoint, target, folded=True)
    predicted = documented_predictor()(str(target), raw_digits.x_test)
    assert (predicted == raw_digits.y_test).mean() == summary.final_test_accuracy
    assert summary.final_test_accuracy is not None and summary.final_test_accuracy > 0.5


def test_names_and_metadata(tmp_path: Path, digits: DataSplits) -> None:
    config = make_config({"model": {"batch_norm": {"scale": True, "on_output": False}},
                          "training": {"epochs": 1, "measure_prediction_cost": False}})
    checkpoint = tmp_path / "ckpt.safetensors"
    run(config, digits, checkpoint_path=checkpoint)
    for folded in (True, False):
        target = tmp_path / f"{folded}.safetensors"
        export_model(checkpoint, target, folded=folded)
        tensors = load_file(str(target))
        with safe_open(str(target), "numpy") as f:
            meta = f.metadata()
        assert meta["format"] == "normlab-model-v1" and meta["folded"] == json.dumps(folded)
        assert json.loads(meta["layers"]) == ["hidden1", "hidden2", "outputs"]
        assert json.loads(meta["widths"]) == [64, 32, 16, 10]
        assert meta["activation"] == "elu"
        assert json.loads(meta["config"]) == config.model_dump(mode="json")
        mean, std = digits.standardization()
        assert np.array_equal(tensors["input.mean"], mean)
        assert np.array_equal(tensors["input.std"], std)
        linear = {f"{ly}.weight" for ly in ("hidden1", "hidden2", "outputs")}
        if folded:
            assert set(tensors) == {"input.mean", "input.std", *linear,
                                    "hidden1.bias", "hidden2.bias", "outputs.bias"}
            assert meta["batch_norm"] == "null"
        else:
            bn = {f"{ly}.bn.{k}" for ly in ("hidden1", "hidden2")
                  for k in ("running_mean", "running_var", "beta", "gamma")}
            assert set(tensors) == {"input.mean", "input.std", *linear, "outputs.bias", *bn}
            assert json.loads(meta["batch_norm"]) == {
                "placement": "before_activation", "epsilon": 0.001, "center": True,
                "scale": True, "on_output": False}
            model, _ = load_checkpoint(checkpoint)
            assert torch.equal(torch.from_numpy(tensors["hidden2.bn.gamma"]),
                               model.layers["hidden2"].bn.gamma)  # type: ignore[union-attr]


def test_an_old_checkpoint_without_statistics(tmp_path: Path, digits: DataSplits) -> None:
    for standardize in (True, False):
        config = make_config({"dataset": {"standardize": standardize}})
        model, _ = load_checkpoint(_fresh(tmp_path, config, digits))
        path = tmp_path / "old.safetensors"
        save_checkpoint(path, model, config)  # no standardization: as written before it existed
        target = tmp_path / "out.safetensors"
        if standardize:
            with pytest.raises(MissingStandardizationError, match="train the experiment again"):
                export_model(path, target, folded=True)
        else:
            export_model(path, target, folded=True)
            assert load_file(str(target))["input.std"].tolist() == [1.0] * 64


def _fresh(tmp_path: Path, config: Any, data: DataSplits) -> Path:
    path = tmp_path / "fresh.safetensors"
    run(config, data, checkpoint_path=path, flush_every_s=0.0, should_stop=lambda: True)
    return path


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu", "selu", "tanh", "sigmoid",
                                        "identity"])
def test_the_predictor_knows_every_activation(tmp_path: Path, activation: str) -> None:
    config = make_config({"model": {"activation": activation, "hidden_layers": [12, 6],
                                    "batch_norm": {"placement": "after_activation"}}})
    torch.manual_seed(0)
    model = MLP(config.model, 5, 4).eval()
    with torch.no_grad():
        for bn in model.bn_layers().values():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    mean, std = np.full(5, 0.5, np.float32), np.full(5, 2.0, np.float32)
    checkpoint, target = tmp_path / "c.safetensors", tmp_path / "m.safetensors"
    save_checkpoint(checkpoint, model, config, standardization=(mean, std))
    export_model(checkpoint, target, folded=True)
    x = np.random.default_rng(0).normal(size=(200, 5)).astype(np.float32) * 3
    with torch.no_grad():
        expected = model(torch.from_numpy((x - mean) / std)).argmax(1).numpy()
    assert np.array_equal(documented_predictor()(str(target), x), expected)
