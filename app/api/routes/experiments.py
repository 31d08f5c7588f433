"""Experiments: submit, list, read, cancel, delete, download the checkpoint."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api import headers, polled
from app.api.deps import (
    DispatcherDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    authorized_session,
)
from app.api.errors import body_error
from app.api.etag import etag_body, etag_json
from app.api.links import EXPERIMENT_LINKS
from app.api.schemas import (
    Cursor,
    ExperimentOut,
    ExperimentPage,
    Problem,
    Status,
    StudyMembership,
    SubmitOptions,
    Tag,
    submit_schema,
)
from app.core.config import Settings
from app.db import experiments
from app.db.keys import Principal
from app.db.models import Experiment
from app.dispatch import queue_for
from worker.training.config import ExperimentConfig
from worker.training.job import planned_steps
from worker.training.presets import UnknownPresetError, build_config
from worker.training.result import TrainSummary

log = logging.getLogger(__name__)
router = APIRouter(prefix="/experiments", tags=["experiments"])
Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"model": Problem, "description": "No such experiment"}}
CONFLICT: Responses = {409: {"model": Problem, "description": "Not allowed in the current status"}}

EXAMPLE = {"preset": "geron-bn", "dataset": {"name": "digits"}, "training": {"epochs": 5},
           "tags": ["bn", "demo"]}


def _aware(stamp: datetime | None) -> datetime | None:
    return stamp.replace(tzinfo=UTC) if stamp is not None and stamp.tzinfo is None else stamp


def to_out(row: Experiment, tags: list[str]) -> ExperimentOut:
    return ExperimentOut(
        id=row.id, name=row.name, tags=tags, status=row.status,
        config=ExperimentConfig.model_validate(row.config),
        created_at=_aware(row.created_at), started_at=_aware(row.started_at),
        finished_at=_aware(row.finished_at), device=row.device, worker=row.worker,
        attempt=row.attempt, dispatch_count=row.dispatch_count, error=row.error,
        summary=TrainSummary.model_validate(row.summary) if row.summary else None,
        study=None if row.study_id is None else StudyMembership(
            id=row.study_id, cell=row.study_cell or 0, seed=row.study_seed or 0),
    )


def load(session: Session, experiment_id: uuid.UUID, principal: Principal) -> Experiment:
    """The experiment, if it exists *and* the caller may see it: another owner's experiment is
    a 404 too, so ids never leak whether they exist."""
    row = experiments.get(session, experiment_id)
    if row is None or not (principal.admin or row.owner == principal.owner):
        raise HTTPException(404, f"experiment {experiment_id} not found")
    return row


def _one(session: Session, row: Experiment) -> ExperimentOut:
    return to_out(row, experiments.tags_of(session, [row.id])[row.id])


def _validate_submission(body: Any) -> tuple[ExperimentConfig, list[str]]:
    if not isinstance(body, dict):
        msg = "the body must be a JSON object"
        if isinstance(body, bytes):  # FastAPI parses JSON only under a JSON Content-Type
            msg += " sent with Content-Type: application/json"
        raise RequestValidationError([{"loc": ("body",), "type": "dict_type", "msg": msg}])
    try:
        options = SubmitOptions.model_validate(body)
    except ValidationError as exc:
        raise body_error(exc) from exc
    raw = {k: v for k, v in body.items() if k not in ("preset", "tags")}
    try:
        return build_config(raw, options.preset), options.tags
    except UnknownPresetError as exc:
        raise RequestValidationError(
            [{"loc": ("body", "preset"), "type": "unknown_preset", "msg": str(exc)}]
        ) from exc
    except ValidationError as exc:
        raise body_error(exc) from exc


def _check_quotas(session: Session, settings: Settings, principal: Principal,
                  config: ExperimentConfig) -> None:
    steps = planned_steps(config)
    if steps > settings.max_steps_per_experiment:
        raise RequestValidationError([{
            "loc": ("body", "training"), "type": "quota",
            "msg": f"this config trains {steps} steps (epochs × steps per epoch); the limit per "
                   f"experiment is {settings.max_steps_per_experiment}",
        }])
    active = experiments.count_active(session, principal.owner)
    if active >= settings.max_active_per_owner:
        raise HTTPException(
            429, f"{principal.owner} has {active} queued or running experiments (limit "
                 f"{settings.max_active_per_owner}); wait for one to finish or cancel one",
            headers={"Retry-After": "30"},
        )


@router.post(
    "", status_code=202, response_model=ExperimentOut,
    responses={202: {"description": "Queued", "links": EXPERIMENT_LINKS},
               409: {"model": Problem, "description": "Idempotency-Key reused with another body"},
               400: {"model": Problem, "description": "Malformed JSON"},
               413: {"model": Problem, "description": "Body over 1 MiB"},
               429: {"model": Problem, "description": "Too many active experiments"}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": submit_schema(), "example": EXAMPLE}}}},
)
def submit_experiment(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    principal: PrincipalDep,
    body: Annotated[Any, Body()],
    idempotency_key: Annotated[str | None, Header(
        max_length=headers.IDEMPOTENCY_KEY_MAX, pattern=headers.IDEMPOTENCY_KEY_PATTERN,
        description="Printable ASCII: a retry with the same key and body returns the same "
                    "experiment")] = None,
) -> ExperimentOut:
    """Queue an experiment. The config may start from a `preset`; unset fields take defaults."""
    config, tags = _validate_submission(body)
    _check_quotas(session, settings, principal, config)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    try:
        row, created = experiments.create(
            session, config=config.model_dump(mode="json"), tags=tags, owner=principal.owner,
            idempotency_key=idempotency_key, request_hash=digest,
        )
    except experiments.IdempotencyConflictError as exc:
        raise HTTPException(409, str(exc)) from exc
    if created:
        # Sent only after the commit: a worker must find the row it is told about.
        queue = queue_for(config.resources.device, settings)
        log.info("experiment %s (%s) queued on %s", row.id, row.name, queue)
        try:
            dispatcher.send(row.id, queue)
        except Exception:  # the row stays queued; the reconciler re-sends it
            log.exception("could not send experiment %s to the broker", row.id)
    response.headers["Location"] = f"/api/v1/experiments/{row.id}"
    return _one(session, row)


@router.get("", response_model=ExperimentPage)
def list_experiments(
    session: SessionDep,
    principal: PrincipalDep,
    status: Status | None = None,
    tag: Tag | None = None,
    name: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Cursor = None,
    study_id: Annotated[uuid.UUID | None, Query(description="Only this study's members")] = None,
) -> ExperimentPage:
    """Newest first. Pass `next_cursor` back as `cursor` for the next page."""
    try:
        page = experiments.list_page(session, limit=limit, cursor=cursor, status=status, tag=tag,
                                     name=name, owner=None if principal.admin else principal.owner,
                                     study_id=study_id)
    except ValueError as exc:
        raise RequestValidationError(
            [{"loc": ("query", "cursor"), "type": "value_error", "msg": str(exc)}]
        ) from exc
    tags = experiments.tags_of(session, [row.id for row in page.items])
    return ExperimentPage(items=[to_out(r, tags[r.id]) for r in page.items],
                          next_cursor=page.next_cursor)


@router.get("/{experiment_id}", response_model=ExperimentOut, responses=NOT_FOUND)
async def get_experiment(experiment_id: uuid.UUID, request: Request) -> Response:
    """One experiment. Send the last `ETag` as `If-None-Match` to get 304 when unchanged."""
    found = await polled.poller(request).read(request, experiment_id)  # one query, shared
    if found is not None:
        return etag_body(request, found[0], tag=found[1])
    return await run_in_threadpool(_get_experiment, experiment_id, request)


def _get_experiment(experiment_id: uuid.UUID, request: Request) -> Response:
    """The general path (401, 404, and a database outage's 503 come from here)."""
    with authorized_session(request) as (session, principal):
        return etag_json(request, _one(session, load(session, experiment_id, principal)))


@router.post("/{experiment_id}/cancel", status_code=202, response_model=ExperimentOut,
             responses={**NOT_FOUND, **CONFLICT})
def cancel_experiment(experiment_id: uuid.UUID, session: SessionDep,
                      principal: PrincipalDep) -> ExperimentOut:
    """Queued: cancelled at once. Running: `cancelling` until the worker stops (seconds)."""
    load(session, experiment_id, principal)
    try:
        status = experiments.request_cancel(session, experiment_id)
    except experiments.InvalidTransitionError as exc:
        raise HTTPException(409, str(exc)) from exc
    log.info("experiment %s %s", experiment_id, status)
    session.expire_all()
    return _one(session, load(session, experiment_id, principal))


@router.delete("/{experiment_id}", status_code=204, responses={**NOT_FOUND, **CONFLICT})
def delete_experiment(
    experiment_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    """Delete a finished experiment with its metrics and checkpoint."""
    load(session, experiment_id, principal)
    try:
        experiments.delete_finished(session, experiment_id)
    except experiments.InvalidTransitionError as exc:
        raise HTTPException(409, str(exc)) from exc
    settings.checkpoint_path(experiment_id).unlink(missing_ok=True)
    return Response(status_code=204)


@router.get(
    "/{experiment_id}/checkpoint", response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}},
                     "description": "safetensors file"}, **NOT_FOUND},
)
def get_checkpoint(
    experiment_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> FileResponse:
    """The model's weights and BN buffers as safetensors, with the config in its metadata."""
    row = load(session, experiment_id, principal)
    path = settings.checkpoint_path(experiment_id)
    if not path.is_file():
        raise HTTPException(404, f"experiment {experiment_id} has no checkpoint yet")
    disposition = headers.attachment(row.name, experiment_id, ".safetensors")
    return FileResponse(path, media_type="application/octet-stream",
                        headers={"Content-Disposition": disposition})
