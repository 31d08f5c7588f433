"""The study spec: the one model the API, the database, the CLI and the presets share.

A study is a base experiment config, factors (dotted config paths → levels), seeds (the pairing
unit) and a response. Structure is checked here; every cell × seed config is checked by the
experiment config model itself in ``app.studies.grid``.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.studies.paths import FORBIDDEN_PATHS, config_paths

MAX_LEVELS = 10
MAX_FACTORS = 6
MAX_SEEDS = 100
DEFAULT_SEEDS = 8  # exact Wilcoxon's smallest two-sided p is 2/2^n: n = 8 reaches 0.0078

ResponseMetric = Literal["final_test_accuracy", "best_val_accuracy", "final_loss", "steps_to"]
EpochMetric = Literal[
    "val_accuracy", "test_accuracy", "train_accuracy", "val_loss", "test_loss", "train_loss"
]
Goal = Literal["max", "min"]
NATURAL_GOAL: dict[str, Goal] = {
    "final_test_accuracy": "max", "best_val_accuracy": "max", "final_loss": "min",
    "steps_to": "min",
}
StudyName = Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[\w .,:+=()/-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ResponseSpec(_Strict):
    """What each member is scored by. ``steps_to``: the first step at which the epoch metric
    ``of`` reaches ``threshold`` (≥ for accuracies, ≤ for losses); never reaching it is censored
    as the worst value."""

    metric: ResponseMetric = "final_test_accuracy"
    of: EpochMetric | None = None
    threshold: float | None = None
    goal: Goal | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        natural = NATURAL_GOAL[self.metric]
        if self.goal is None:
            self.goal = natural
        elif self.goal != natural:
            raise ValueError(f"goal of {self.metric} is {natural!r} (got {self.goal!r})")
        if self.metric == "steps_to":
            if self.of is None or self.threshold is None:
                raise ValueError("steps_to needs 'of' (an epoch metric) and 'threshold'")
        elif self.of is not None or self.threshold is not None:
            raise ValueError(f"'of' and 'threshold' apply only to steps_to, not {self.metric}")
        return self

    @property
    def reaches_upward(self) -> bool:
        """steps_to: the threshold is reached from below (accuracies) or above (losses)."""
        return self.of is not None and self.of.endswith("accuracy")

    @property
    def label(self) -> str:
        if self.metric == "steps_to":
            sign = ">=" if self.reaches_upward else "<="
            return f"steps to {self.of} {sign} {self.threshold:g}"
        return self.metric


class FactorSpec(_Strict):
    levels: list[Any] = Field(min_length=1, max_length=MAX_LEVELS)
    labels: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = None

    @model_validator(mode="after")
    def _labels(self) -> Self:
        keys = [_canonical(v) for v in self.levels]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise ValueError(f"level {i} repeats level {keys.index(key)}: {key}")
        if self.labels is None:
            self.labels = [level_label(v) for v in self.levels]
        elif len(self.labels) != len(self.levels):
            raise ValueError(f"{len(self.labels)} labels for {len(self.levels)} levels")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must differ: {self.labels}")
        return self


class StudySpec(_Strict):
    """A whole study. ``factors`` maps a dotted config path to its levels (a list, or
    ``{levels: [...], labels: [...]}``); a level of a section path is merged like a preset."""

    name: StudyName = "study"
    base: dict[str, Any] = Field(default_factory=dict, description=(
        "The experiment config every member starts from (the `POST /experiments` body, less "
        "`tags`); each member, base plus its cell's levels, must be a valid config (refused "
        "with 422 naming the field and the factor that set it)."))
    factors: dict[str, FactorSpec] = Field(
        min_length=1, max_length=MAX_FACTORS,
        # The keys a factor may take, published so a client knows them before it submits.
        json_schema_extra={"propertyNames": {"enum": [
            path for path in sorted(config_paths()) if path not in FORBIDDEN_PATHS]}},
        description=(
            "Dotted config path → its levels. Rules across fields, refused with 422 naming the "
            "factor and level: each level must be a valid value of its path (an object of the "
            "section's fields for a section), levels and labels must not repeat, two factors "
            "must not overlap (one inside the other), and every member's config must be valid "
            "(e.g. a batch_size of 1 with batch_norm)."),
    )
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(
        default_factory=lambda: list(range(DEFAULT_SEEDS)), min_length=1, max_length=MAX_SEEDS,
        description=f"The seeds (or a count, 1 to {MAX_SEEDS}); they must not repeat (refused "
                    "with 422)",
    )
    response: ResponseSpec = Field(default=ResponseSpec(), description=(
        "Rules across fields, refused with 422: `goal` is the metric's own (max for "
        "accuracies, min for final_loss and steps_to); `of` and `threshold` are required by "
        "steps_to and allowed only there."))

    @field_validator("factors", mode="before")
    @classmethod
    def _factor_lists(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: {"levels": v} if isinstance(v, list) else v for k, v in value.items()}
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("seeds is a count (1-100) or a list of seeds")
        if isinstance(value, int):
            if not 1 <= value <= MAX_SEEDS:
                raise ValueError(f"seeds must be between 1 and {MAX_SEEDS} (got {value})")
            return list(range(value))
        if isinstance(value, list) and len(set(map(str, value))) != len(value):
            raise ValueError("seeds must not repeat")
        return value

    @model_validator(mode="after")
    def _paths(self) -> Self:
        """Factor paths and levels, each error located at its factor (and level)."""
        paths = config_paths()
        errors: list[tuple[tuple[str | int, ...], str, object]] = []
        for path, factor in self.factors.items():
            try:
                check_path(path, paths)
            except PathError as exc:
                errors.append((("factors", path), str(exc), path))
                continue
            for i, level in enumerate(factor.levels):
                try:
                    check_level(path, i, level, is_section=paths[path])
                except ValueError as exc:
                    errors.append((("factors", path, "levels", i), str(exc), level))
        for a, b in itertools.pairwise(sorted(self.factors)):
            if b.startswith(a + "."):
                errors.append((("factors", b), f"factors {a!r} and {b!r} overlap: {b} is "
                                               f"inside {a}", b))
        if errors:
            raise ValidationError.from_exception_data("StudySpec", [
                InitErrorDetails(type=PydanticCustomError("value_error", msg), loc=loc,
                                 input=value) for loc, msg, value in errors])
        return self

    @property
    def n_cells(self) -> int:
        return math.prod(len(f.levels) for f in self.factors.values())

    @property
    def n_members(self) -> int:
        return self.n_cells * len(self.seeds)


class PathError(ValueError):
    pass


def check_path(path: str, paths: dict[str, bool]) -> None:
    if path in FORBIDDEN_PATHS:
        raise PathError(f"{path!r} cannot be a factor: {FORBIDDEN_PATHS[path]}")
    if path not in paths:
        near = difflib.get_close_matches(path, list(paths), n=3, cutoff=0.5)
        hint = f"; nearest valid paths: {', '.join(near)}" if near else ""
        raise PathError(f"unknown config path {path!r}{hint}")


def check_level(path: str, index: int, level: object, *, is_section: bool) -> None:
    where = f"{path} level {index}"
    if is_section:
        if not isinstance(level, dict):
            raise ValueError(f"{where}: {path} is a section, so a level is an object of its fields")
        for forbidden, why in FORBIDDEN_PATHS.items():
            head, _, leaf = forbidden.rpartition(".")
            if path == head and leaf in level:
                raise ValueError(f"{where}: {forbidden} cannot vary: {why}")
        if not level:
            raise ValueError(f"{where}: an empty object changes nothing")
    elif isinstance(level, dict):
        raise ValueError(f"{where}: {path} is a field, not a section; give its value")
    if isinstance(level, float) and not math.isfinite(level):
        raise ValueError(f"{where}: levels must be finite")


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def level_label(value: object) -> str:
    """A short label: true, 0.5, norm, [100,100], mode=norm,threshold=1.0."""
    if isinstance(value, dict):
        return ",".join(f"{k}={level_label(v)}" for k, v in value.items())[:64]
    if isinstance(value, str):
        return value[:64]
    return json.dumps(value, separators=(",", ":"))[:64]


def epoch_metrics() -> tuple[str, ...]:
    return get_args(EpochMetric)


def example_spec() -> dict[str, Any]:
    """The issue's example, used in the API docs."""
    return {
        "name": "bn-rescues-sigmoid",
        "base": {
            "dataset": {"name": "digits"},
            "model": {"hidden_layers": [100, 100, 100], "activation": "sigmoid",
                      "init": "normal", "init_std": 0.01},
            "optimizer": {"name": "sgd", "learning_rate": 0.5},
            "training": {"epochs": 20, "batch_size": 50},
        },
        "factors": {"model.batch_norm.enabled": [False, True]},
        "seeds": 8,
        "response": {"metric": "final_test_accuracy"},
    }

