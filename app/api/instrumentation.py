"""Counts every HTTP request and its latency, labelled by route template (not the path: one
label per route, whatever ids the paths hold), method and status."""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import telemetry

UNMATCHED = "unmatched"  # a 404 for a path no route serves: one label for all of them
_PARAM = re.compile(r"{([^}:]+)(:[^}]*)?}")


# Per route object (kept alive here, so its id is never reused): its full template.
_TEMPLATES: dict[int, tuple[object, str]] = {}


def route_template(scope: Scope) -> str:
    """The matched route's path template with its router's prefix: ``/api/v1/experiments/
    {experiment_id}``. The router leaves the route in the scope; an included router's route
    knows only its own part of the path, so the prefix is what the request path has before it.
    """
    route: Any = scope.get("route")
    cached = _TEMPLATES.get(id(route))
    if cached is not None and cached[0] is route:
        return cached[1]
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return UNMATCHED
    params = scope.get("path_params") or {}
    try:
        rendered = _PARAM.sub(lambda m: str(params[m.group(1)]), template)
    except KeyError:
        return _PARAM.sub(r"{\1}", template)
    path: str = scope.get("path", "")
    if not path.endswith(rendered):
        return _PARAM.sub(r"{\1}", template)
    full = path[: len(path) - len(rendered)] + _PARAM.sub(r"{\1}", template)
    _TEMPLATES[id(route)] = (route, full)
    return full


# (method, route, status) → its counter and histogram: labels() validates and locks each time.
_SERIES: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def _series(labels: tuple[str, str, str]) -> tuple[Any, Any]:
    found = _SERIES.get(labels)
    if found is None:
        made = telemetry.instruments()
        found = _SERIES[labels] = (made.requests.labels(*labels),
                                   made.request_seconds.labels(*labels))
    return found


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # The router put the matched route in the scope (the same dict) on its way in.
            count, seconds = _series((scope["method"], route_template(scope), str(status)))
            count.inc()
            seconds.observe(time.perf_counter() - started)
