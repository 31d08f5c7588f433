"""Grid expansion: a spec's cells (one level of each factor) × seeds → validated member configs."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.studies.paths import config_paths
from app.studies.spec import StudySpec
from worker.training.config import ExperimentConfig
from worker.training.presets import UnknownPresetError, deep_merge, preset_dict


@dataclass(frozen=True)
class Cell:
    index: int
    levels: tuple[int, ...]  # the level index of each factor, in the spec's factor order
    labels: tuple[str, ...]

    def describe(self, spec: StudySpec) -> str:
        return ", ".join(f"{p}={lab}" for p, lab in zip(spec.factors, self.labels, strict=True))


@dataclass(frozen=True)
class Member:
    cell: int
    seed: int
    config: ExperimentConfig


class GridError(ValueError):
    """A spec whose base or cells do not make valid experiment configs (a 422)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def cells(spec: StudySpec) -> list[Cell]:
    """Every combination of levels, the last factor varying fastest; the index is the cell id."""
    factors = list(spec.factors.values())
    combos = itertools.product(*(range(len(f.levels)) for f in factors))
    return [
        Cell(i, combo, tuple((f.labels or [])[j] for f, j in zip(factors, combo, strict=True)))
        for i, combo in enumerate(combos)
    ]


def base_raw(spec: StudySpec) -> dict[str, Any]:
    """The base config with its preset (if any) merged underneath, as POST /experiments does."""
    raw = copy.deepcopy(spec.base)
    preset = raw.pop("preset", None)
    if preset is None:
        return raw
    try:
        return deep_merge(preset_dict(str(preset)), raw)
    except UnknownPresetError as exc:
        raise GridError([{"loc": ["base", "preset"], "msg": str(exc),
                          "type": "unknown_preset"}]) from exc


def apply_levels(raw: dict[str, Any], spec: StudySpec, cell: Cell) -> dict[str, Any]:
    """``raw`` with the cell's level of every factor: a field is set, a section is merged."""
    out = copy.deepcopy(raw)
    sections = config_paths()
    for (path, factor), j in zip(spec.factors.items(), cell.levels, strict=True):
        *parents, leaf = path.split(".")
        node = out
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parents[:depth + 1])
                raise GridError([{"loc": ["base", *parents[:depth + 1]], "type": "dict_type",
                                  "msg": f"{where} must be an object (factor {path} sets a "
                                         "field inside it)"}])
            node = child
        level = factor.levels[j]
        if sections[path] and isinstance(node.get(leaf), dict):
            node[leaf] = deep_merge(node[leaf], level)
        else:
            node[leaf] = copy.deepcopy(level)
    return out


def member_name(spec: StudySpec, cell: Cell, seed: int) -> str:
    return f"{spec.name}:c{cell.index}:s{seed}"[:100]


def expand(spec: StudySpec) -> list[Member]:
    """Every member's config, validated by the experiment config model; the first invalid cell
    raises ``GridError`` naming its levels and the field."""
    raw = base_raw(spec)
    members: list[Member] = []
    for cell in cells(spec):
        merged = apply_levels(raw, spec, cell)
        training = merged.setdefault("training", {})
        if not isinstance(training, dict):
            raise GridError([{"loc": ["base", "training"], "msg": "training must be an object",
                              "type": "dict_type"}])
        for seed in spec.seeds:
            training["seed"] = seed
            merged["name"] = member_name(spec, cell, seed)
            try:
                config = ExperimentConfig.model_validate(merged)
            except ValidationError as exc:
                raise GridError(_cell_errors(exc, spec, cell)) from exc
            members.append(Member(cell.index, seed, config))
    return members


def _cell_errors(exc: ValidationError, spec: StudySpec, cell: Cell) -> list[dict[str, Any]]:
    """Errors located at the field, naming the cell's levels (the factor that set the field,
    if one did)."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        setters = [p for p in spec.factors if field == p or field.startswith(p + ".")
                   or p.startswith(field + ".")]
        where = f"in the cell {cell.describe(spec)}"
        if setters:
            where += f" (set by factor {', '.join(setters)})"
        out.append({"loc": ["base", *err["loc"]], "msg": f"{field}: {err['msg']}; {where}",
                    "type": err["type"], "input": err.get("input")})
    return out
