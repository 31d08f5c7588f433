"""``normlab study run --local``: train every member in this process, one after another, and
analyse them with the same statistics code as the service."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from app.studies.grid import Member, expand
from app.studies.results import Outcome, document, outcome
from app.studies.spec import ResponseSpec, StudySpec
from worker.training.job import run_job
from worker.training.result import MetricPoint

OnMember = Callable[[int, Member, Outcome], None]


def _reach_tracker(response: ResponseSpec) -> tuple[Callable[[Sequence[MetricPoint]], None],
                                                   Callable[[], int | None]]:
    """An ``on_metrics`` that notes the first step at which ``response.of`` reaches the
    threshold (as ``app.db.studies.first_reaching`` finds it in the database)."""
    first: list[int] = []
    threshold = response.threshold

    def on_metrics(batch: Sequence[MetricPoint]) -> None:
        if first or response.of is None or threshold is None:
            return
        for p in batch:
            if p.name == response.of and math.isfinite(p.value) and (
                    p.value >= threshold if response.reaches_upward else p.value <= threshold):
                first.append(p.step)
                return

    return on_metrics, lambda: first[0] if first else None


def run_member(spec: StudySpec, member: Member, device: str | None = None) -> Outcome:
    on_metrics, reached = _reach_tracker(spec.response)
    try:
        result = run_job(member.config, on_metrics=on_metrics, device_override=device)
    except Exception:  # a member that crashes is "failed", as a worker would record it
        return outcome(spec.response, member.cell, member.seed, "failed", None)
    summary: dict[str, Any] = result.summary.model_dump(mode="json")
    return outcome(spec.response, member.cell, member.seed, result.status, summary, reached())


def run_local(spec: StudySpec, *, device: str | None = None,
              on_member: OnMember | None = None) -> dict[str, Any]:
    """Every member, in grid order; returns the results document (without a study id)."""
    members = expand(spec)
    outcomes = []
    for i, member in enumerate(members):
        done = run_member(spec, member, device)
        outcomes.append(done)
        if on_member is not None:
            on_member(i, member, done)
    return {"name": spec.name, "n_members": len(members), "spec": spec.model_dump(mode="json"),
            **document(spec, outcomes, len(members))}
