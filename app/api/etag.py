"""JSON responses with an ETag: a poller sending If-None-Match gets 304 when nothing changed."""

from __future__ import annotations

import hashlib

from fastapi import Request, Response
from pydantic import BaseModel

from app.api.headers import entity_tags


def etag_json(request: Request, model: BaseModel, *, status_code: int = 200,
              headers: dict[str, str] | None = None) -> Response:
    return etag_body(request, model.model_dump_json().encode(), status_code=status_code,
                     headers=headers)


def etag_of(body: bytes) -> str:
    return f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'


def etag_body(request: Request, body: bytes, *, status_code: int = 200,
              headers: dict[str, str] | None = None, tag: str | None = None) -> Response:
    """``body`` (JSON already encoded) with its ETag, or 304 if the client has it. ``tag``:
    the body's ``etag_of``, when the caller has it already (a cached representation)."""
    tag = tag or etag_of(body)
    all_headers = {"ETag": tag, "Cache-Control": "no-cache", **(headers or {})}
    if _matches(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=all_headers)
    return Response(body, status_code=status_code, media_type="application/json",
                    headers=all_headers)


def _matches(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110 13.1.2: ``*`` matches any representation, and If-None-Match compares weakly
    (``"x"`` matches ``W/"x"``): a client or proxy that drops the ``W/`` still gets its 304."""
    tags = entity_tags(if_none_match)
    if tags is None:
        return False
    opaque = tag.removeprefix("W/")
    return any(t == "*" or t.removeprefix("W/") == opaque for t in tags)
