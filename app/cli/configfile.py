"""Reading experiment configs from files for the CLI (JSON or YAML), with presets and --set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import ValidationError

from worker.training.config import ExperimentConfig
from worker.training.presets import UnknownPresetError, apply_assignments, build_config


def read_raw(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    text = path.read_text()
    data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold a JSON/YAML object")
    return data


def load_config(
    path: Path | None, preset: str | None, assignments: list[str]
) -> tuple[dict[str, Any], ExperimentConfig]:
    """Returns (the raw submission, the validated config). Errors exit with a clear message."""
    try:
        raw = apply_assignments(read_raw(path), assignments)
        preset = preset or raw.pop("preset", None)
        return ({**raw, "preset": preset} if preset else raw), build_config(raw, preset)
    except (OSError, json.JSONDecodeError, yaml.YAMLError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            lines = [
                f"  {'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()
            ]
            message = "invalid config:\n" + "\n".join(lines)
        elif isinstance(exc, UnknownPresetError):
            message = str(exc)
        else:
            message = f"cannot read config: {exc}"
        typer.echo(message, err=True)
        raise typer.Exit(2) from exc
