"""The dotted paths of the experiment config model: what a study factor may vary."""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, get_args

from pydantic import BaseModel

from worker.training.config import ExperimentConfig

# Paths a factor may not vary, and why.
FORBIDDEN_PATHS = {
    "training.seed": "seeds are the pairing unit (use 'seeds')",
    "name": "the study names its members",
}


def _section(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *get_args(annotation)]
    for candidate in candidates:
        if inspect.isclass(candidate) and issubclass(candidate, BaseModel):
            return candidate
    return None


@lru_cache(maxsize=1)
def config_paths() -> dict[str, bool]:
    """Every dotted path of ``ExperimentConfig`` → whether it is a section (a sub-model)."""
    paths: dict[str, bool] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            path = f"{prefix}{name}"
            section = _section(field.annotation)
            paths[path] = section is not None
            if section is not None:
                walk(section, f"{path}.")

    walk(ExperimentConfig, "")
    return paths
