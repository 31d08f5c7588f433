"""FastAPI dependencies: settings, the job dispatcher, and the one way a route authorizes.

Every data route takes ``CallerDep``, or ``ExperimentDep``/``StudyDep`` when its path names
one (tests/api/test_routes.py checks that none forgets). These dependencies are ``async`` and
touch no database: they only say *what* to authorize. The work happens when the handler opens
them, in its own thread, so a request costs one thread hop however many pieces it needs::

    with access.open() as (session, experiment):  # 401, or 404 for an invisible one
        ...

Another owner's experiment or study is a 404, as a missing one: ids never tell whether they
exist.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from app.api.auth import KEYS_SEEN, UnauthorizedError, authorize
from app.api.schemas import Problem
from app.core.config import Settings
from app.db import experiments, keys, studies
from app.db.keys import Principal
from app.db.records import ExperimentRecord
from app.db.session import session_factory
from app.db.studies import StudyRecord
from app.dispatch import Dispatcher

Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"model": Problem, "description": "No such experiment"}}
STUDY_NOT_FOUND: Responses = {404: {"model": Problem, "description": "No such study"}}
CONFLICT: Responses = {409: {"model": Problem, "description": "Not allowed in the current status"}}


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


@dataclass(frozen=True)
class Caller:
    """The request's caller, resolved (401) when the handler opens a session."""

    settings: Settings
    authorization: str | None  # the header, as sent

    def principal(self, session: Session) -> Principal:
        settings = self.settings
        auth_on = KEYS_SEEN.known_on(settings) or KEYS_SEEN.found(
            settings, keys.any_created(session))
        try:
            return authorize(self.authorization, auth_on=auth_on,
                             lookup=lambda digest: keys.lookup(session, digest))
        except UnauthorizedError as exc:
            raise HTTPException(401, str(exc),
                                headers={"WWW-Authenticate": 'Bearer realm="normlab"'}) from exc

    def new_session(self) -> Session:
        """A session not yet authorized (``readyz`` checks the database first)."""
        return session_factory(self.settings.database_url)()

    @contextmanager
    def session(self) -> Iterator[tuple[Session, Principal]]:
        with self.new_session() as session:
            yield session, self.principal(session)

    def check(self) -> Principal:
        """Authorize (401), for a route that reads nothing else from the database."""
        with self.session() as (_, principal):
            return principal


def visible(owner: str, principal: Principal) -> bool:
    return principal.admin or owner == principal.owner


def visible_experiment(session: Session, experiment_id: uuid.UUID,
                       principal: Principal) -> ExperimentRecord:
    """The experiment, if it exists *and* the caller may see it; else 404."""
    record = experiments.get(session, experiment_id)
    if record is None or not visible(record.owner, principal):
        raise HTTPException(404, f"experiment {experiment_id} not found")
    return record


def visible_study(session: Session, study_id: uuid.UUID, principal: Principal) -> StudyRecord:
    """The study, if it exists *and* the caller may see it; else 404."""
    record = studies.get(session, study_id)
    if record is None or not visible(record.owner, principal):
        raise HTTPException(404, f"study {study_id} not found")
    return record


@dataclass(frozen=True)
class ExperimentAccess:
    """The experiment of the route's path, for its caller."""

    caller: Caller
    id: uuid.UUID

    @contextmanager
    def open(self) -> Iterator[tuple[Session, ExperimentRecord]]:
        with self.caller.session() as (session, principal):
            yield session, visible_experiment(session, self.id, principal)

    def record(self) -> ExperimentRecord:
        """The experiment alone, for a handler that needs no more of the database."""
        with self.open() as (_, record):
            return record


@dataclass(frozen=True)
class StudyAccess:
    """The study of the route's path, for its caller."""

    caller: Caller
    id: uuid.UUID

    @contextmanager
    def open(self) -> Iterator[tuple[Session, StudyRecord]]:
        with self.caller.session() as (session, principal):
            yield session, visible_study(session, self.id, principal)

    def record(self) -> StudyRecord:
        with self.open() as (_, record):
            return record


def _caller(request: Request) -> Caller:
    return Caller(request.app.state.settings, request.headers.get("authorization"))


# Each is one level of dependency, not a chain through ``get_caller``: FastAPI's dependency
# resolution costs about as much per level as the polling fast path's own work.
async def get_caller(request: Request) -> Caller:
    return _caller(request)


CallerDep = Annotated[Caller, Depends(get_caller)]


async def experiment_access(experiment_id: uuid.UUID, request: Request) -> ExperimentAccess:
    return ExperimentAccess(_caller(request), experiment_id)


ExperimentDep = Annotated[ExperimentAccess, Depends(experiment_access)]


async def study_access(study_id: uuid.UUID, request: Request) -> StudyAccess:
    return StudyAccess(_caller(request), study_id)


StudyDep = Annotated[StudyAccess, Depends(study_access)]
