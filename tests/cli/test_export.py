"""`normlab export`: the CLI downloads the route's file (in-process app, real route)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.numpy import load as load_bytes
from safetensors.numpy import load_file
from typer.testing import CliRunner

from app.cli import export as export_cli
from app.cli.main import cli
from app.core.config import Settings
from app.db.session import engine_for
from app.main import create_app
from tests.api.helpers import API, FakeDispatcher
from worker.training.checkpoint import save_checkpoint
from worker.training.config import ExperimentConfig
from worker.training.model import MLP

runner = CliRunner()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, str]]:
    """A service with one experiment that has a checkpoint; the CLI's client talks to it."""
    settings = Settings(database_url=f"sqlite:///{tmp_path}/t.db", data_dir=tmp_path / "data",
                        artifacts_dir=tmp_path / "art")
    with TestClient(create_app(settings, dispatcher=FakeDispatcher())) as client:
        body = client.post(f"{API}/experiments", json={"name": "cli"}).json()
        config = ExperimentConfig.model_validate(body["config"])
        path = settings.checkpoint_path(body["id"])
        path.parent.mkdir(parents=True)
        torch.manual_seed(0)
        stats = (np.zeros(64, np.float32), np.ones(64, np.float32))
        save_checkpoint(path, MLP(config.model, 64, 10), config, standardization=stats)
        # The CLI's `with` must not end the test client's lifespan: hand it over unclosable.
        monkeypatch.setattr(export_cli, "open_client", lambda url, key: nullcontext(client))
        yield client, body["id"]
    engine_for(settings.database_url).dispose()


def test_export_folded_to_a_file(served: tuple[TestClient, str], tmp_path: Path) -> None:
    client, eid = served
    target = tmp_path / "model.safetensors"
    result = runner.invoke(cli, ["export", eid, "--folded", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(target)
    served_file = load_bytes(client.get(f"{API}/experiments/{eid}/model?folded=true").content)
    written = load_file(str(target))
    assert written.keys() == served_file.keys() and "outputs.bias" in written
    assert all(np.array_equal(written[k], served_file[k]) for k in written)


def test_export_default_name_and_errors(served: tuple[TestClient, str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _, eid = served
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["export", eid])
    assert result.exit_code == 0, result.output
    assert (tmp_path / f"cli-{eid}-trained.safetensors").is_file()
    missing = runner.invoke(cli, ["export", "00000000-0000-0000-0000-000000000000"])
    assert missing.exit_code == 2 and "404" in missing.output
    assert not list(tmp_path.glob(".*.part"))
