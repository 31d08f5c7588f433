"""Request parameters shared by several route modules: metric names, in the path or as a list,
checked against what an experiment's config records."""

from __future__ import annotations

import difflib
import re
import uuid
from collections import OrderedDict
from typing import Annotated

from fastapi import Path
from fastapi.exceptions import RequestValidationError

from app.api.schemas import METRIC_NAME_PATTERN
from app.db.records import ExperimentRecord
from worker.training.config import ExperimentConfig
from worker.training.metricnames import produced_names

MetricPath = Annotated[str, Path(pattern=METRIC_NAME_PATTERN, examples=["loss"])]
_NAME = re.compile(METRIC_NAME_PATTERN)


def parse_names(names: str | None) -> list[str] | None:
    """The comma-separated ``names`` parameter; None when it was not sent. Sent but empty is a
    422: answering every metric (or none) would hide the client's mistake."""
    if names is None:
        return None
    parts = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
    bad = [n for n in parts if not _NAME.match(n)]
    if bad or not parts or len(parts) > 100:
        raise RequestValidationError([{
            "loc": ("query", "names"), "type": "value_error",
            "msg": f"invalid metric name(s): {', '.join(bad[:5])}" if bad
            else "at most 100 names" if parts
            else "names is empty: give metric names, or leave the parameter out",
        }])
    return parts


# Configs never change once submitted: the names each one produces are computed once.
_KNOWN: OrderedDict[uuid.UUID, frozenset[str]] = OrderedDict()
_KNOWN_CACHE_SIZE = 4096


def known_names(experiment: ExperimentRecord) -> frozenset[str]:
    """The metric names this experiment's config makes the engine record (written or not)."""
    found = _KNOWN.get(experiment.id)
    if found is None:
        found = frozenset(produced_names(ExperimentConfig.model_validate(experiment.config)))
        _KNOWN[experiment.id] = found
        while len(_KNOWN) > _KNOWN_CACHE_SIZE:
            _KNOWN.popitem(last=False)
    return found


def unknown_names_message(unknown: list[str], known: frozenset[str]) -> str:
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return (f"unknown metric name(s) {', '.join(hints)}; this experiment's config records: "
            f"{', '.join(sorted(known))}")


def check_names(names: list[str], known: frozenset[str]) -> None:
    """422 for names no config of the request records (a name not written *yet* is fine)."""
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RequestValidationError([{"loc": ("query", "names"), "type": "unknown_metric",
                                       "msg": unknown_names_message(unknown, known)}])
