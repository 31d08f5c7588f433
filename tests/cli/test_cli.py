"""The `normlab` command line: train, presets, keys, migrate (in-process via Typer's runner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from app.cli.main import cli

runner = CliRunner()
SMALL = {
    "dataset": {"name": "digits"},
    "model": {"hidden_layers": [16]},
    "training": {"epochs": 2, "batch_size": 64},
    "resources": {"device": "cpu"},
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NORMLAB_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")


def test_train_json_config_with_out(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps(SMALL))
    out = tmp_path / "result.json"
    result = runner.invoke(
        cli,
        ["train", str(config), "--out", str(out), "--checkpoint", str(tmp_path / "m.safetensors")],
    )
    assert result.exit_code == 0, result.output
    assert "final_test_accuracy" in result.output  # the summary table
    payload = json.loads(out.read_text())
    summary = payload["summary"]
    assert summary["status"] == "succeeded" and summary["epochs_completed"] == 2
    for key in (
        "steps",
        "final_test_accuracy",
        "best_val_accuracy",
        "final_loss",
        "diverged_at_step",
        "diverged_metric",
        "duration_s",
        "samples_per_s",
    ):
        assert key in summary
    loss = [m["step"] for m in payload["metrics"] if m["name"] == "loss"]
    assert loss == list(range(1, summary["steps"] + 1))
    assert payload["config"]["model"]["hidden_layers"] == [16]
    assert (tmp_path / "m.safetensors").is_file()


def test_train_threads_sets_torch_intra_op_threads(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps(SMALL))
    before = torch.get_num_threads()
    try:
        result = runner.invoke(cli, ["train", str(config), "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    refused = runner.invoke(cli, ["train", str(config), "--threads", "0"])
    assert refused.exit_code == 2 and "--threads" in refused.output


def test_train_yaml_with_preset_and_set(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("dataset:\n  name: digits\ntraining:\n  epochs: 1\n")
    out = tmp_path / "r.json"
    result = runner.invoke(
        cli,
        [
            "train",
            str(config),
            "--preset",
            "geron-clip",
            "--set",
            "training.batch_size=128",
            "--set",
            "name=clip-test",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    cfg = json.loads(out.read_text())["config"]
    assert cfg["clipping"] == {"mode": "value", "threshold": 1.0}
    assert cfg["training"]["batch_size"] == 128 and cfg["name"] == "clip-test"
    assert cfg["dataset"]["name"] == "digits"


def test_diverging_run_exits_non_zero_with_a_summary(tmp_path: Path) -> None:
    result = runner.invoke(
        cli,
        [
            "train",
            "--set",
            "dataset.name=digits",
            "--set",
            "optimizer.learning_rate=10",
            "--set",
            "model.batch_norm.enabled=false",
            "--set",
            "training.epochs=2",
            "--out",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 3  # divergence is a result, with its own exit code
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["status"] == "diverged" and summary["diverged_at_step"] >= 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--set", "training.epochs=0"], "training.epochs"),
        (["--set", "optimizer.learning_rate=NaN"], "optimizer.learning_rate"),
        (["--set", "model.colour=red"], "model.colour"),
        (["--preset", "nope"], "unknown preset"),
        (["--set", "novalue"], "key=value"),
    ],
)
def test_config_errors_name_the_field(args: list[str], says: str) -> None:
    result = runner.invoke(cli, ["train", *args])
    assert result.exit_code == 2
    assert says in result.output


def test_presets_lists_all_three() -> None:
    result = runner.invoke(cli, ["presets"])
    assert result.exit_code == 0
    for name in ("geron-bn", "geron-clip", "ioffe-mnist"):
        assert name in result.output


def test_migrate_and_keys(tmp_path: Path) -> None:
    assert "revision 0" in runner.invoke(cli, ["migrate"]).output
    created = runner.invoke(cli, ["keys", "create", "--name", "alice"])
    assert created.exit_code == 0 and created.stdout.strip().startswith("nlk_")
    listed = runner.invoke(cli, ["keys", "list"])
    assert "alice" in listed.output and created.stdout.strip() not in listed.output
    key_id = next(line.split()[1] for line in listed.output.splitlines() if "alice" in line)
    assert runner.invoke(cli, ["keys", "revoke", key_id]).exit_code == 0
    assert runner.invoke(cli, ["keys", "revoke", key_id]).exit_code == 1
    assert runner.invoke(cli, ["keys", "create", "--name", "bad name!"]).exit_code == 2


def test_worker_names_are_unique_per_process_by_default_and_checked() -> None:
    import os

    import pytest

    from app.cli.service import worker_name

    assert worker_name(None) == f"normlab-{os.getpid()}@%h"
    assert worker_name(None, "embedded") == f"embedded-{os.getpid()}@%h"
    assert worker_name("gpu-a") == "gpu-a@%h"
    assert worker_name("gpu-a@box1") == "gpu-a@box1"
    for bad in ("", "two words", "a@b@c", "x/y", "ü"):
        with pytest.raises(ValueError, match="invalid worker name"):
            worker_name(bad)
