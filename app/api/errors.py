"""Error responses: every client mistake is a 4xx that names the problem, never a 500."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.training.result import encode_float


def _clean(value: Any) -> Any:
    """Make an offending input JSON-safe (NaN and Infinity inputs are common offenders)."""
    if isinstance(value, float):
        return encode_float(value) if not math.isfinite(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def validation_details(errors: Sequence[Any],
                       prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    details: list[dict[str, Any]] = []
    for err in errors:
        loc = [*prefix, *err.get("loc", ())]
        item = {"loc": loc, "msg": err.get("msg", "invalid"), "type": err.get("type", "invalid")}
        offending = err.get("input")
        # Echo the offending input, but not a large one (a 10,000-item array, a 1 MB string).
        if isinstance(offending, str) and len(offending) > 200:
            offending = offending[:200] + "..."
        if "input" in err and not isinstance(offending, dict) and not (
            isinstance(offending, list | tuple) and len(offending) > 32
        ):
            item["input"] = _clean(offending)
        details.append(item)
    return details


def body_error(exc: ValidationError) -> RequestValidationError:
    """A pydantic error raised while validating a request body, located under ``body``."""
    return RequestValidationError(validation_details(exc.errors(), ("body",)))


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = validation_details(exc.errors())
    for item in details:
        if item["type"] == "json_invalid":
            return JSONResponse({"detail": f"malformed JSON: {item['msg']}"}, status_code=400)
    return JSONResponse({"detail": details}, status_code=422)


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    # A restart or failover of the database is not the client's fault, nor a bug: say so.
    return JSONResponse({"detail": "database unavailable, retry shortly"}, status_code=503,
                        headers={"Retry-After": "2"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        # Starlette names only the first route's methods; a path served by several routes
        # (GET and POST /experiments) must list them all.
        path = request.url.path
        allowed = sorted({m for route in request.app.router.routes
                          if isinstance(route, APIRoute) and route.path_regex.match(path)
                          for m in route.methods or ()})
        exc = StarletteHTTPException(405, exc.detail, headers={"Allow": ", ".join(allowed)})
    return await http_exception_handler(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(OperationalError, _database_unavailable)


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, by header or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLargeError(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLargeError:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body is larger than {self.max_bytes} bytes"}, status_code=413
        )
        await response(scope, receive, send)


class _BodyTooLargeError(HTTPException):
    """An HTTPException, so FastAPI's body reader re-raises it (413) instead of answering 400."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is larger than {max_bytes} bytes")
