"""Studies in the service: submission checks, creation, dispatch, and the results document.

Raises domain errors (``SpecError`` 422, ``TooManyMembersError`` 413, ``QuotaError`` 429);
the routes turn them into responses. Every database access goes through ``app.db.studies``.
"""

from __future__ import annotations

import csv
import io
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.db import experiments, series, studies
from app.db.studies import MemberRecord, NewMember, StudyRecord
from app.dispatch import Dispatcher, plan_groups, send_job
from app.studies import curves as curve_math
from app.studies.grid import GridError, cells, expand
from app.studies.results import Outcome, Pairs, document, outcome
from app.studies.spec import StudySpec
from worker.training.job import planned_steps

log = logging.getLogger(__name__)


class SpecError(ValueError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(str(errors))
        self.errors = errors


class TooManyMembersError(ValueError):
    pass


class QuotaError(Exception):
    pass


def plan(spec: StudySpec, settings: Settings) -> list[NewMember]:
    """Every member's validated config, or the error that refuses the whole study."""
    if spec.n_members > settings.max_study_members:
        sizes = " × ".join(str(len(f.levels)) for f in spec.factors.values())
        raise TooManyMembersError(
            f"this study has {spec.n_members} members ({sizes} cells × {len(spec.seeds)} seeds); "
            f"the limit is {settings.max_study_members} (NORMLAB_MAX_STUDY_MEMBERS)")
    try:
        members = expand(spec)
    except GridError as exc:
        raise SpecError(exc.errors) from exc
    for m in members:
        steps = planned_steps(m.config)
        if steps > settings.max_steps_per_experiment:
            raise SpecError([{
                "loc": ["base", "training"], "type": "quota",
                "msg": f"member {m.config.name} trains {steps} steps; the limit per experiment "
                       f"is {settings.max_steps_per_experiment}"}])
    return [NewMember(m.cell, m.seed, m.config.model_dump(mode="json")) for m in members]


def check_quota(session: Session, settings: Settings, owner: str, n_members: int) -> None:
    """A study counts as its members against the owner's active-experiment quota."""
    active = experiments.count_active(session, owner)
    if active + n_members > settings.max_active_per_owner:
        raise QuotaError(
            f"{owner} has {active} queued or running experiments and this study adds "
            f"{n_members} (limit {settings.max_active_per_owner}); wait, cancel some, or run "
            "fewer seeds or levels")


def dispatch_members(dispatcher: Dispatcher, settings: Settings,
                     members: Sequence[tuple[uuid.UUID, dict[str, Any]]]) -> int:
    """Send a study's members (id, config) to the broker after the commit: fusable members in
    fused groups of at most ``fuse_max`` (one message each, ``app.dispatch.plan_groups``), the
    rest one message each. The one place members are dispatched. On a broker error the rest
    stay queued and the reconciler sends them. Returns how many members were sent."""
    jobs = plan_groups(settings, members)
    sent = 0
    for job in jobs:
        try:
            send_job(dispatcher, job)
        except Exception:
            log.exception("could not send study members %s (and %d more) to the broker",
                          [str(i) for i in job[1]], len(members) - sent - len(job[1]))
            return sent
        sent += len(job[1])
    return sent


def outcomes(session: Session, spec: StudySpec, members: list[MemberRecord]) -> list[Outcome]:
    reached: dict[uuid.UUID, int] = {}
    r = spec.response
    if r.metric == "steps_to" and r.of is not None and r.threshold is not None:
        done = [m.id for m in members if m.status == "succeeded"]
        reached = studies.first_reaching(session, done, r.of, r.threshold, r.reaches_upward)
    return [outcome(r, m.cell, m.seed, m.status, m.summary, reached.get(m.id)) for m in members]


def header(record: StudyRecord) -> dict[str, Any]:
    return {"id": str(record.id), "name": record.name, "owner": record.owner,
            "created_at": record.created_at.isoformat(), "n_members": record.n_members,
            "spec": record.spec}


def results_body(session: Session, record: StudyRecord, pairs: Pairs = "first") -> bytes:
    """The results document as JSON bytes, cached under the members' fingerprint: computed
    again only after a member changed status (or was deleted), however often it is polled."""
    key = studies.fingerprint(session, record.id)
    cached = studies.cached_results(session, record.id, key) if pairs == "first" else None
    if cached is not None:
        return cached.encode()
    spec = StudySpec.model_validate(record.spec)
    members = studies.members(session, record.id)
    doc = {**header(record), **document(spec, outcomes(session, spec, members), len(members),
                                        pairs)}
    body = orjson.dumps(doc)
    if pairs == "first":
        studies.store_results(session, record.id, key, body.decode())
    return body


def curves(session: Session, record: StudyRecord, metric: str, points: int) -> dict[str, Any]:
    """Per cell learning curves of ``metric`` on one step grid shared by every member."""
    spec = StudySpec.model_validate(record.spec)
    members = studies.members(session, record.id)
    ranges = {m.id: series.step_range(session, m.id, metric, count_cap=1) for m in members}
    found = [r for r in ranges.values() if r is not None]
    lo, hi = (min(r.lo for r in found), max(r.hi for r in found)) if found else (0, -1)
    member_buckets = [
        (m.cell, {b.bucket: b.mean for b in series.series(
            session, m.id, metric, points=points, raw_if_small=False, lo=lo, hi=hi)})
        for m in members if ranges[m.id] is not None
    ]
    return {"id": str(record.id), "metric": metric, "points": points,
            "from_step": lo if found else None, "to_step": hi if found else None,
            "band": curve_math.BAND,
            "cells": curve_math.aggregate(cells(spec), list(spec.factors), member_buckets, lo, hi,
                                          points)}


SUMMARY_COLUMNS = ("steps", "epochs_completed", "final_test_accuracy", "best_val_accuracy",
                   "final_loss", "diverged_at_step", "duration_s", "collapsed_at_step")
# The end-of-run prediction timing (issue 16), µs per sample, per batch size and model.
_PREDICTION = [(b, m) for b in (1, 1024) for m in ("trained", "folded", "no_bn")]
PREDICTION_COLUMNS = tuple(f"predict_us_b{b}_{m}" for b, m in _PREDICTION)


def _prediction_cells(summary: dict[str, Any]) -> list[Any]:
    """``PREDICTION_COLUMNS`` of one member ("" where the run did not time prediction)."""
    by_batch = {c["batch_size"]: c for c in summary.get("prediction_cost") or []}
    return [by_batch.get(b, {}).get(f"{m}_us", "") for b, m in _PREDICTION]


def results_csv(session: Session, record: StudyRecord) -> str:
    """One row per member: levels, seed, status, response, and the summary's main fields."""
    spec = StudySpec.model_validate(record.spec)
    members = studies.members(session, record.id)
    grid = cells(spec)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["experiment_id", "cell", *spec.factors, "seed", "status", "response",
                     "diverged", *SUMMARY_COLUMNS, *PREDICTION_COLUMNS])
    for m, o in zip(members, outcomes(session, spec, members), strict=True):
        summary = m.summary or {}
        writer.writerow([m.id, m.cell, *(grid[m.cell].labels if m.cell < len(grid) else ()),
                         m.seed, m.status, "" if o.response is None else o.response,
                         o.diverged, *("" if summary.get(k) is None else summary[k]
                                       for k in SUMMARY_COLUMNS), *_prediction_cells(summary)])
    return buffer.getvalue()
