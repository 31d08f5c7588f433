"""examples/: every config loads and validates as `normlab train` reads it, and one runs; and
docs/config.md is what `normlab config-reference` generates from the config model today."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli.configfile import load_config
from app.cli.main import cli
from app.cli.reference import reference

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_there_is_an_example_per_claim() -> None:
    assert {p.stem for p in EXAMPLES} >= {
        "bn-rescues-sigmoid", "bn-larger-learning-rate", "clipping-value-vs-norm"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_load_validate_and_run_offline(path: Path) -> None:
    raw, config = load_config(path, None, [])
    assert config.name == path.stem and raw["name"] == path.stem
    assert config.dataset.name in ("digits", "mnist_5k", "synthetic")  # bundled: offline
    text = path.read_text()
    assert text.startswith("# Claim") and f"normlab train examples/{path.name}" in text


def test_an_example_runs_and_the_exploding_arm_diverges(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(tmp_path))
    path = ROOT / "examples" / "clipping-value-vs-norm.yaml"
    result = CliRunner().invoke(cli, ["train", str(path), "--set", "clipping.mode=none",
                                      "--set", "training.epochs=1"])
    assert result.exit_code == 3, result.output  # diverged: the claim's unclipped arm
    assert "diverged_at_step" in result.stdout


def test_docs_config_md_is_up_to_date() -> None:
    stored = (ROOT / "docs" / "config.md").read_text()
    assert stored == reference(), (
        "docs/config.md is stale: run `normlab config-reference --out docs/config.md`")
    for field in ("model.batch_norm.decay", "clipping.mode", "training.max_steps"):
        assert f"`{field}`" in stored
