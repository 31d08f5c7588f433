"""Which experiments can be trained together as one stacked network (a fused group).

Members of a group share everything that fixes the shapes and the schedule of a step —
dataset, architecture, batch size, epochs, max_steps, logging cadence, optimizer kind, device —
and may differ only in the fields of ``MEMBER_FIELDS``. The group key is the config with those
fields (and the cosmetic ``name``) removed, as canonical JSON: equal keys ⇔ fusable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from worker.training.config import ExperimentConfig

# (section, field) pairs a member may set on its own. The seed covers the weight init, the
# shuffling order and the dataset split (the engine derives the split from it: members with
# different seeds train on different splits of the same dataset).
MEMBER_FIELDS: tuple[tuple[str, ...], ...] = (
    ("name",),
    ("training", "seed"),
    ("optimizer", "learning_rate"),
    ("optimizer", "momentum"),
    ("optimizer", "weight_decay"),
    ("model", "init"),
    ("model", "init_std"),
    ("clipping", "mode"),
    ("clipping", "threshold"),
    ("model", "batch_norm", "decay"),
    ("model", "batch_norm", "epsilon"),
)


class NotFusableError(ValueError):
    """The configs differ in a field that members of one fused group must share."""


def fusion_key(config: ExperimentConfig) -> str:
    """Canonical JSON of the shared part of ``config``: configs with equal keys are fusable."""
    shared: dict[str, Any] = config.model_dump(mode="json")
    for path in MEMBER_FIELDS:
        node = shared
        for part in path[:-1]:
            node = node[part]
        node.pop(path[-1])
    return json.dumps(shared, sort_keys=True, separators=(",", ":"))


def check_fusable(configs: Sequence[ExperimentConfig]) -> None:
    """Raise ``NotFusableError`` naming the first shared field on which the configs disagree."""
    if not configs:
        raise NotFusableError("a fused group needs at least one member")
    first = json.loads(fusion_key(configs[0]))
    for i, config in enumerate(configs[1:], start=1):
        other = json.loads(fusion_key(config))
        if other != first:
            field = _first_difference(first, other)
            raise NotFusableError(
                f"member {i} differs from member 0 in {field!r}, which fused members must share"
            )


def fusable_groups(configs: Sequence[ExperimentConfig], max_size: int) -> list[list[int]]:
    """Indices of ``configs`` split into fusable groups of at most ``max_size``, in input order."""
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    by_key: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        by_key.setdefault(fusion_key(config), []).append(i)
    return [
        members[start : start + max_size]
        for members in by_key.values()
        for start in range(0, len(members), max_size)
    ]


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".")
