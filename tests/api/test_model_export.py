"""GET /experiments/{id}/model: the exported safetensors, its name, and its errors."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from safetensors import safe_open
from safetensors.numpy import load as load_bytes

from app.api.routes.exports import download_name
from app.core.config import Settings
from tests.api.helpers import API, submit
from worker.training.checkpoint import save_checkpoint
from worker.training.config import ExperimentConfig
from worker.training.model import MLP


def _write_checkpoint(path: Path, config: ExperimentConfig, statistics: bool = True) -> None:
    torch.manual_seed(0)
    model = MLP(config.model, 64, 10)
    mean, std = np.full(64, 3.0, np.float32), np.full(64, 2.0, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, config, standardization=(mean, std) if statistics else None)


def test_model_404_until_written_then_folded_or_not(client: TestClient, settings: Settings,
                                                    tmp_path: Path) -> None:
    body = submit(client, {"name": "bn run", "model": {"hidden_layers": [8]}})
    url = f"{API}/experiments/{body['id']}/model"
    missing = client.get(url)
    assert missing.status_code == 404 and "checkpoint" in missing.json()["detail"]
    _write_checkpoint(settings.checkpoint_path(body["id"]),
                      ExperimentConfig.model_validate(body["config"]))
    for query, folded in (("?folded=true", True), ("?folded=false", False), ("", False)):
        response = client.get(url + query)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/octet-stream"
        kind = "folded" if folded else "trained"
        assert response.headers["content-disposition"] == (
            f'attachment; filename="bn_run-{body["id"]}-{kind}.safetensors"')
        tensors = load_bytes(response.content)
        assert tensors["input.mean"].tolist() == [3.0] * 64
        assert ("hidden1.bias" in tensors) == folded
        assert ("hidden1.bn.running_var" in tensors) == (not folded)
        saved = tmp_path / f"{kind}.safetensors"
        saved.write_bytes(response.content)
        with safe_open(str(saved), "numpy") as f:
            assert json.loads(f.metadata()["widths"]) == [64, 8, 10]
    assert client.get(f"{API}/experiments/{uuid.uuid4()}/model").status_code == 404


def test_model_bad_query_and_old_checkpoints(client: TestClient, settings: Settings) -> None:
    body = submit(client, {"name": "old"})
    url = f"{API}/experiments/{body['id']}/model"
    bad = client.get(url + "?folded=maybe")
    assert bad.status_code == 422 and "folded" in bad.text
    _write_checkpoint(settings.checkpoint_path(body["id"]),
                      ExperimentConfig.model_validate(body["config"]), statistics=False)
    conflict = client.get(url + "?folded=true")
    assert conflict.status_code == 409
    assert "standardization" in conflict.json()["detail"]


def test_download_names_are_safe() -> None:
    eid = uuid.UUID(int=1)
    assert download_name('a"b\r\nc;d/../é', eid, True) == f"a_b_c_d-{eid}-folded.safetensors"
    assert download_name("...", eid, False) == f"experiment-{eid}-trained.safetensors"
