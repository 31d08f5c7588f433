"""FastAPI dependencies: settings, a database session per request, the job dispatcher."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from app.api import headers
from app.core.config import Settings
from app.db import keys
from app.db.keys import Principal
from app.db.session import session_factory
from app.dispatch import Dispatcher


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    session = session_factory(settings.database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_db)]


def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


_keys_exist: set[str] = set()  # database URLs known to have keys: auth, once on, stays on


def auth_enabled(session: Session, settings: Settings) -> bool:
    """Auth is on when required, or as soon as any key was ever created (revoking every key
    does not open the API again)."""
    if settings.auth == "required" or settings.database_url in _keys_exist:
        return True
    if keys.any_created(session):
        _keys_exist.add(settings.database_url)
        return True
    return False


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": 'Bearer realm="normlab"'})


def get_principal(request: Request, session: SessionDep, settings: SettingsDep) -> Principal:
    return resolve_principal(request, session, settings)


def resolve_principal(request: Request, session: Session, settings: Settings) -> Principal:
    """Who is calling, from ``Authorization: Bearer <key>``; raises 401 when auth is on."""
    if not auth_enabled(session, settings):
        # No keys anywhere: only possible on a loopback-bound server (`serve` enforces that).
        return Principal(owner="local", admin=True)
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized("missing Authorization header: send 'Authorization: Bearer <key>'")
    try:
        token = headers.bearer_token(header)
    except headers.MalformedAuthorizationError as exc:
        raise _unauthorized(str(exc)) from exc
    principal = keys.authenticate(session, token)
    if principal is None:
        raise _unauthorized("invalid or revoked API key")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


@contextmanager
def authorized_session(request: Request) -> Iterator[tuple[Session, Principal]]:
    """A session and the caller (or 401), for handlers that do all their database work in one
    thread hop instead of one hop per dependency."""
    settings: Settings = request.app.state.settings
    with session_factory(settings.database_url)() as session:
        yield session, resolve_principal(request, session, settings)
