"""The hot polling path: ``GET /experiments/{id}`` answered in the event loop with one query.

Dashboards poll one experiment many times a second. The general path costs a session, four
queries (a pool ping, the auth check, the row, its tags) and a thread hop per request. Here
one statement returns the experiment, its tags and (when a key is sent, or keys may exist) the
caller's key, on a connection this app keeps for its event loop (autocommit: no transaction
round trips; only ever used from the loop, so never shared between threads). On Postgres it is
an asynchronous psycopg connection, and identical concurrent polls share one query
(``app.api.coalescing``: never one that started before the request arrived), so the loop serves
other requests while the database answers. The JSON is cached per experiment, keyed on every
stored value that goes into it: the answer is always exactly what the general path would build
from the current row, never a stale copy.

Anything unusual (no such row, a missing or bad key, another owner's experiment, a database
error) returns None, and the caller takes the general path, which produces the 401/404/503.
Both paths decide who is calling with the same function (``app.api.auth.authorize``) and build
the answer from the same record (``app.db.records.ExperimentRecord``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections import OrderedDict
from typing import Any

import psycopg
from fastapi import Request
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from app.api.auth import KEYS_SEEN, UnauthorizedError, authorize, key_digest
from app.api.coalescing import Coalescer
from app.api.deps import Caller, visible
from app.api.etag import etag_of
from app.api.schemas import ExperimentOut
from app.core.config import Settings
from app.db import keys, polling
from app.db.records import ExperimentRecord
from app.db.session import backend, engine_for

log = logging.getLogger(__name__)
CACHE_SIZE = 4096  # cached representations per process (about 2 KB each)
BACKOFF_S = 1.0  # after a database error, the general path only, for this long

class Poller:
    """One per app: the loop's connection and the representation cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connection: Connection | None = None  # SQLite
        self.asynchronous = backend(settings.database_url) == "postgres"
        self.loop_connection = LoopConnection(settings.database_url)
        self.coalescer: Coalescer[list[Any]] = Coalescer()
        self.loop: asyncio.AbstractEventLoop | None = None
        weakref.finalize(self, self.loop_connection.discard)  # when this app goes away
        self.cache: OrderedDict[uuid.UUID, tuple[tuple[Any, ...], bytes, str]] = OrderedDict()
        self.down_until = 0.0

    async def read(self, caller: Caller, experiment_id: uuid.UUID) -> tuple[bytes, str] | None:
        if time.monotonic() < self.down_until:
            return None
        header = caller.authorization
        try:  # the caller's key row comes with the experiment: find it by the key's id
            digest = key_digest(header) if header else None
        except UnauthorizedError:
            digest = None  # the general path answers with the 401
        auth_known_on = KEYS_SEEN.known_on(self.settings)
        if auth_known_on and digest is None:
            return None
        try:
            rows = await self._query(experiment_id, digest[:12] if digest else None,
                                     probe_keys=not auth_known_on)
        except (DBAPIError, psycopg.Error) as exc:
            log.warning("polling fast path off for %.0f s: %s", BACKOFF_S,
                        str(exc).splitlines()[0])
            if not self.asynchronous:  # the asynchronous one discards itself (LoopConnection)
                self.close()
            self.down_until = time.monotonic() + BACKOFF_S
            return None
        if not rows:
            return None
        first = rows[0]
        auth_on = auth_known_on or KEYS_SEEN.found(self.settings, bool(first.keys_exist))
        try:  # the key row is already here: the lookup only checks it
            principal = authorize(header, auth_on=auth_on, lookup=lambda sent: keys.principal_of(
                sent, first.key_hash, first.key_owner, first.key_admin, first.key_revoked_at))
        except UnauthorizedError:
            return None
        if not visible(first.owner, principal):
            return None
        tags = [r.tag for r in rows if r.tag is not None]
        return self._representation(experiment_id, polling.record_values(first), tags)

    async def _query(self, experiment_id: uuid.UUID, key_id: str | None,
                     probe_keys: bool) -> list[Any]:
        if self.asynchronous:
            loop = asyncio.get_running_loop()
            if self.loop is not loop:  # futures and connections belong to one event loop
                self.loop, self.coalescer = loop, Coalescer()
                self.loop_connection.discard()
            return await self.coalescer.get(
                (experiment_id, key_id, probe_keys),
                lambda: self._query_async(experiment_id, key_id, probe_keys),
            )
        if self.connection is None or self.connection.closed:
            self.connection = engine_for(self.settings.database_url).connect().execution_options(
                isolation_level="AUTOCOMMIT")
            # Back to the pool when this app goes away (tests make many apps in one process).
            weakref.finalize(self, _close, self.connection)
        return polling.experiment_rows(self.connection, experiment_id, key_id, probe_keys)

    async def _query_async(self, experiment_id: uuid.UUID, key_id: str | None,
                           probe_keys: bool) -> list[Any]:
        connection = await self.loop_connection.get()
        try:
            return await polling.experiment_rows_async(connection, experiment_id, key_id,
                                                       probe_keys)
        except psycopg.Error:
            self.loop_connection.discard(connection)  # this one failed; a newer one may be fine
            raise

    def _representation(self, experiment_id: uuid.UUID, values: tuple[Any, ...],
                        tags: list[str]) -> tuple[bytes, str]:
        key = (*values, *tags)
        cached = self.cache.get(experiment_id)
        if cached is not None and cached[0] == key:
            self.cache.move_to_end(experiment_id)
            return cached[1], cached[2]
        record = ExperimentRecord.from_values(values)
        body = ExperimentOut.of(record, tags).model_dump_json().encode()
        tag = etag_of(body)
        self.cache[experiment_id] = (key, body, tag)
        self.cache.move_to_end(experiment_id)
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return body, tag

    def close(self) -> None:
        if self.connection is not None:
            _close(self.connection)
            self.connection = None
        self.loop_connection.discard()


class LoopConnection:
    """The event loop's psycopg connection: opened once (polls arriving while it connects wait
    for the same connection), replaced after a failure. The owner discards it when the event
    loop changes."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.connection: psycopg.AsyncConnection[Any] | None = None
        self.connecting: asyncio.Task[psycopg.AsyncConnection[Any]] | None = None

    async def get(self) -> psycopg.AsyncConnection[Any]:
        if self.connection is not None and not self.connection.closed:
            return self.connection
        if self.connecting is None:
            self.connecting = asyncio.create_task(polling.connect_async(self.database_url))
        task = self.connecting
        try:
            connection = await asyncio.shield(task)
        finally:
            if self.connecting is task and task.done():
                self.connecting = None
        if self.connection is None or self.connection.closed:
            self.connection = connection
        elif self.connection is not connection:
            _finish(connection)  # a connect that discard() forgot finished first: keep that one
        return self.connection

    def discard(self, failed: psycopg.AsyncConnection[Any] | None = None) -> None:
        """Close the connection (and forget one being opened); with ``failed``, only if the
        connection is still that one."""
        if failed is not None and failed is not self.connection:
            return
        self.connecting = None
        if self.connection is not None:
            _finish(self.connection)
            self.connection = None


def _close(connection: Connection) -> None:
    with contextlib.suppress(DBAPIError):
        connection.close()


def _finish(connection: psycopg.AsyncConnection[Any]) -> None:
    """Close without the event loop (it may be gone): libpq's own close, no round trip."""
    connection.pgconn.finish()


def poller(request: Request) -> Poller:
    found: Poller | None = getattr(request.app.state, "poller", None)
    if found is None:
        found = request.app.state.poller = Poller(request.app.state.settings)
    return found
