"""Studies: submit a seed-paired factorial grid, list, read results, cancel, delete."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import (
    APIRouter,
    BackgroundTasks,
    Body,
    Header,
    HTTPException,
    Query,
    Request,
    Response,
)
from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import STUDY_NOT_FOUND, CallerDep, DispatcherDep, StudyAccess, StudyDep
from app.api.errors import validation_details
from app.api.etag import etag_body
from app.api.links import STUDY_LINKS
from app.api.schemas import Cursor, Problem
from app.api.study_schemas import StudyCancelled, StudyOut, StudyPage, StudyProgress
from app.core.config import Settings
from app.db import studies
from app.db.experiments import IdempotencyConflictError
from app.db.keys import Principal
from app.db.studies import StudyRecord
from app.dispatch import Dispatcher
from app.studies import service
from app.studies.results import Pairs, progress
from app.studies.spec import StudySpec, example_spec

router = APIRouter(prefix="/studies", tags=["studies"])


def to_out(record: StudyRecord, counts: dict[str, int]) -> StudyOut:
    statuses = [s for s, n in counts.items() for _ in range(n)]
    return StudyOut(
        id=record.id, name=record.name, owner=record.owner, created_at=record.created_at,
        n_members=record.n_members, spec=StudySpec.model_validate(record.spec),
        progress=StudyProgress(**progress(statuses, sum(counts.values()))),
    )


@router.post(
    "", status_code=202, response_model=StudyOut,
    responses={202: {"description": "Queued", "links": STUDY_LINKS},
               400: {"model": Problem, "description": "Malformed JSON"},
               409: {"model": Problem, "description": "Idempotency-Key reused with another body"},
               413: {"model": Problem, "description": "More members than the limit, or a body "
                                                      "over 1 MiB"},
               429: {"model": Problem, "description": "The members exceed the owner's quota"}},
)
def submit_study(
    response: Response, background: BackgroundTasks, caller: CallerDep, dispatcher: DispatcherDep,
    spec: Annotated[StudySpec, Body(examples=[example_spec()])],
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> StudyOut:
    """Queue every cell × seed of a study as ordinary experiments, all or none. Each member's
    config is validated first; an invalid one refuses the study (422 naming levels and field)."""
    with caller.session() as (session, principal):
        return _submit(response, background, session, principal, caller.settings, dispatcher,
                       spec, idempotency_key)


def _submit(response: Response, background: BackgroundTasks, session: Session,
            principal: Principal, settings: Settings, dispatcher: Dispatcher, spec: StudySpec,
            idempotency_key: str | None) -> StudyOut:
    try:
        members = service.plan(spec, settings)
    except service.TooManyMembersError as exc:
        raise HTTPException(413, str(exc)) from exc
    except service.SpecError as exc:
        raise RequestValidationError(validation_details(exc.errors, ("body",))) from exc
    normalized = spec.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(normalized, sort_keys=True).encode()).hexdigest()
    try:
        earlier = studies.replay(session, owner=principal.owner, idempotency_key=idempotency_key,
                                 request_hash=digest)
        if earlier is not None:
            response.headers["Location"] = f"/api/v1/studies/{earlier.id}"
            return to_out(earlier, studies.progress(session, earlier.id))
        service.check_quota(session, settings, principal.owner, len(members))
        record, ids, created = studies.create(
            session, name=spec.name, spec=normalized, members=members,
            owner=principal.owner, idempotency_key=idempotency_key, request_hash=digest)
    except IdempotencyConflictError as exc:
        raise HTTPException(409, str(exc)) from exc
    except service.QuotaError as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": "30"}) from exc
    if created:
        # Sent only after the commit (a worker must find the row it is told about), and after
        # the answer: 512 broker messages need not delay the 202. Members whose message never
        # goes out stay queued, and the reconciler sends them.
        background.add_task(service.dispatch_members, dispatcher, settings, [
            (i, m.config) for i, m in zip(ids, members, strict=True)
        ])
    response.headers["Location"] = f"/api/v1/studies/{record.id}"
    return to_out(record, studies.progress(session, record.id))


@router.get("", response_model=StudyPage)
def list_studies(
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Cursor = None,
) -> StudyPage:
    """Newest first. Pass `next_cursor` back as `cursor` for the next page."""
    with caller.session() as (session, principal):
        try:
            page = studies.list_page(session, limit=limit, cursor=cursor,
                                     owner=None if principal.admin else principal.owner)
        except ValueError as exc:
            raise RequestValidationError(
                [{"loc": ("query", "cursor"), "type": "value_error", "msg": str(exc)}]) from exc
        counts = studies.progress_many(session, [r.id for r in page.items])
    return StudyPage(items=[to_out(r, counts[r.id]) for r in page.items],
                     next_cursor=page.next_cursor)


@router.get("/{study_id}", responses={200: {"description": "The results document"},
                                     **STUDY_NOT_FOUND})
async def get_study(
    access: StudyDep, request: Request,
    pairs: Annotated[Pairs, Query(description="first: each level against the first; all: "
                                              "every pair of levels")] = "first",
) -> Response:
    """Progress, per-cell statistics, seed-paired contrasts per factor (Holm-adjusted), the
    interaction of two factors, and a verdict per contrast. Deterministic; ETag/304."""
    return await run_in_threadpool(_get_study, request, access, pairs)


def _get_study(request: Request, access: StudyAccess, pairs: Pairs) -> Response:
    with access.open() as (session, record):
        return etag_body(request, service.results_body(session, record, pairs))


@router.post("/{study_id}/cancel", status_code=202, response_model=StudyCancelled,
             responses=STUDY_NOT_FOUND)
def cancel_study(access: StudyDep) -> StudyCancelled:
    """Cancel every member that is not finished (queued at once, running within seconds)."""
    with access.open() as (session, _):
        done = studies.cancel(session, access.id)
    return StudyCancelled(id=access.id, cancelled=done["cancelled"],
                          cancelling=done["cancelling"])


@router.delete("/{study_id}", status_code=204,
               responses={**STUDY_NOT_FOUND,
                          409: {"model": Problem, "description": "Members active"}})
def delete_study(access: StudyDep) -> Response:
    """Delete a finished study with its members, their metrics and checkpoints."""
    with access.open() as (session, _):
        try:
            ids = studies.delete_finished(session, access.id)
        except studies.StudyActiveError as exc:
            raise HTTPException(409, str(exc)) from exc
    for member_id in ids:
        access.caller.settings.delete_checkpoint(member_id)
    return Response(status_code=204)
