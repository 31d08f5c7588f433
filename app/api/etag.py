"""JSON responses with an ETag: a poller sending If-None-Match gets 304 when nothing changed."""

from __future__ import annotations

import hashlib

from fastapi import Request, Response
from pydantic import BaseModel


def etag_json(request: Request, model: BaseModel, *, status_code: int = 200,
              headers: dict[str, str] | None = None) -> Response:
    body = model.model_dump_json().encode()
    tag = f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'
    all_headers = {"ETag": tag, "Cache-Control": "no-cache", **(headers or {})}
    match = request.headers.get("if-none-match")
    if match and tag in {t.strip() for t in match.split(",")}:
        return Response(status_code=304, headers=all_headers)
    return Response(body, status_code=status_code, media_type="application/json",
                    headers=all_headers)
