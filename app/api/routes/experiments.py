"""Experiments: submit, list, read, cancel, delete, download the checkpoint."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api import headers, polled
from app.api.deps import (
    CONFLICT,
    NOT_FOUND,
    CallerDep,
    DispatcherDep,
    ExperimentAccess,
    ExperimentDep,
    visible_experiment,
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
    SubmitOptions,
    Tag,
    submit_schema,
)
from app.core.config import Settings
from app.db import experiments
from app.db.keys import Principal
from app.db.records import ExperimentRecord
from app.dispatch import queue_for
from worker.training.config import ExperimentConfig
from worker.training.job import planned_steps
from worker.training.presets import UnknownPresetError, build_config

log = logging.getLogger(__name__)
router = APIRouter(prefix="/experiments", tags=["experiments"])

EXAMPLE = {"preset": "geron-bn", "dataset": {"name": "digits"}, "training": {"epochs": 5},
           "tags": ["bn", "demo"]}


def _one(session: Session, record: ExperimentRecord) -> ExperimentOut:
    return ExperimentOut.of(record, experiments.tags_of(session, [record.id])[record.id])


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
    caller: CallerDep,
    dispatcher: DispatcherDep,
    body: Annotated[Any, Body()],
    idempotency_key: Annotated[str | None, Header(
        max_length=headers.IDEMPOTENCY_KEY_MAX, pattern=headers.IDEMPOTENCY_KEY_PATTERN,
        description="Printable ASCII: a retry with the same key and body returns the same "
                    "experiment")] = None,
) -> ExperimentOut:
    """Queue an experiment. The config may start from a `preset`; unset fields take defaults."""
    with caller.session() as (session, principal):
        config, tags = _validate_submission(body)
        settings = caller.settings
        _check_quotas(session, settings, principal, config)
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        try:
            row, created = experiments.create(
                session, config=config.model_dump(mode="json"), tags=tags, owner=principal.owner,
                idempotency_key=idempotency_key, request_hash=digest,
            )
        except experiments.IdempotencyConflictError as exc:
            raise HTTPException(409, str(exc)) from exc
        answer = _one(session, row)
    if created:
        # Sent only after the commit: a worker must find the row it is told about.
        queue = queue_for(config.resources.device, settings)
        log.info("experiment %s (%s) queued on %s", row.id, row.name, queue)
        try:
            dispatcher.send(row.id, queue)
        except Exception:  # the row stays queued; the reconciler re-sends it
            log.exception("could not send experiment %s to the broker", row.id)
    response.headers["Location"] = f"/api/v1/experiments/{row.id}"
    return answer


@router.get("", response_model=ExperimentPage)
def list_experiments(
    caller: CallerDep,
    status: Status | None = None,
    tag: Tag | None = None,
    name: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Cursor = None,
    study_id: Annotated[uuid.UUID | None, Query(description="Only this study's members")] = None,
) -> ExperimentPage:
    """Newest first. Pass `next_cursor` back as `cursor` for the next page."""
    with caller.session() as (session, principal):
        try:
            page = experiments.list_page(
                session, limit=limit, cursor=cursor, status=status, tag=tag, name=name,
                owner=None if principal.admin else principal.owner, study_id=study_id)
        except ValueError as exc:
            raise RequestValidationError(
                [{"loc": ("query", "cursor"), "type": "value_error", "msg": str(exc)}]
            ) from exc
        tags = experiments.tags_of(session, [row.id for row in page.items])
    return ExperimentPage(items=[ExperimentOut.of(r, tags[r.id]) for r in page.items],
                          next_cursor=page.next_cursor)


@router.get("/{experiment_id}", response_model=ExperimentOut, responses=NOT_FOUND)
async def get_experiment(access: ExperimentDep, request: Request) -> Response:
    """One experiment. Send the last `ETag` as `If-None-Match` to get 304 when unchanged."""
    found = await polled.poller(request).read(access.caller, access.id)  # one query, shared
    if found is not None:
        return etag_body(request, found[0], tag=found[1])
    return await run_in_threadpool(_get_experiment, access, request)


def _get_experiment(access: ExperimentAccess, request: Request) -> Response:
    """The general path (401, 404, and a database outage's 503 come from here)."""
    with access.open() as (session, experiment):
        return etag_json(request, _one(session, experiment))


@router.post("/{experiment_id}/cancel", status_code=202, response_model=ExperimentOut,
             responses={**NOT_FOUND, **CONFLICT})
def cancel_experiment(access: ExperimentDep) -> ExperimentOut:
    """Queued: cancelled at once. Running: `cancelling` until the worker stops (seconds)."""
    with access.caller.session() as (session, principal):
        visible_experiment(session, access.id, principal)
        try:
            status = experiments.request_cancel(session, access.id)
        except experiments.InvalidTransitionError as exc:
            raise HTTPException(409, str(exc)) from exc
        log.info("experiment %s %s", access.id, status)
        return _one(session, visible_experiment(session, access.id, principal))


@router.delete("/{experiment_id}", status_code=204, responses={**NOT_FOUND, **CONFLICT})
def delete_experiment(access: ExperimentDep) -> Response:
    """Delete a finished experiment with its metrics and checkpoint."""
    with access.open() as (session, _):
        try:
            experiments.delete_finished(session, access.id)
        except experiments.InvalidTransitionError as exc:
            raise HTTPException(409, str(exc)) from exc
    access.caller.settings.delete_checkpoint(access.id)
    return Response(status_code=204)


@router.get(
    "/{experiment_id}/checkpoint", response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}},
                     "description": "safetensors file"}, **NOT_FOUND},
)
def get_checkpoint(access: ExperimentDep) -> FileResponse:
    """The model's weights and BN buffers as safetensors, with the config in its metadata."""
    experiment = access.record()
    path = access.caller.settings.checkpoint_path(access.id)
    if not path.is_file():
        raise HTTPException(404, f"experiment {access.id} has no checkpoint yet")
    disposition = headers.attachment(experiment.name, access.id, ".safetensors")
    return FileResponse(path, media_type="application/octet-stream",
                        headers={"Content-Disposition": disposition})
