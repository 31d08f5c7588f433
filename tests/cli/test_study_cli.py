"""`normlab study`: presets, spec files with --set, and --local runs with the service's
statistics code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from app.cli.main import cli
from app.studies.grid import expand
from app.studies.presets import STUDY_PRESETS, preset_spec
from app.studies.spec import StudySpec

runner = CliRunner()
TINY = {
    "name": "tiny",
    "base": {"dataset": {"name": "digits"}, "model": {"hidden_layers": [16]},
             "training": {"epochs": 1, "batch_size": 64}, "resources": {"device": "cpu"}},
    "factors": {"model.batch_norm.enabled": [False, True]},
    "seeds": 2,
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(tmp_path / "data"))


@pytest.mark.parametrize("preset", [p.name for p in STUDY_PRESETS])
def test_every_preset_expands_within_the_default_quota(preset: str) -> None:
    spec = StudySpec.model_validate(preset_spec(preset))
    quota = 21 if preset == "clipping-stops-explosion" else 20  # see its description
    assert spec.name == preset and len(expand(spec)) == spec.n_members <= quota


def test_presets_are_listed() -> None:
    result = runner.invoke(cli, ["study", "presets"])
    assert result.exit_code == 0
    assert all(p.name in result.output for p in STUDY_PRESETS)


def test_bad_specs_exit_2_with_the_reason(tmp_path: Path) -> None:
    result = runner.invoke(cli, ["study", "run", "--preset", "nope", "--local"])
    assert result.exit_code == 2 and "unknown study preset" in result.output
    result = runner.invoke(cli, ["study", "run", "--preset", "bn-rescues-sigmoid",
                                 "--set", "seeds=0", "--local"])
    assert result.exit_code == 2 and "seeds" in result.output


def test_local_run_prints_cells_contrasts_and_verdicts(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "results.json"
    result = runner.invoke(cli, ["study", "run", str(spec_file), "--set", "seeds=[3, 4]",
                                 "--local", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "paired contrasts" in result.output and "too few pairs" in result.output
    doc = json.loads(out.read_text())
    assert doc["progress"]["by_status"] == {"succeeded": 4}
    assert doc["spec"]["seeds"] == [3, 4] and doc["contrasts"][0]["n_pairs"] == 2
