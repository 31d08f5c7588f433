"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api.errors import BodySizeLimit, install_error_handlers
from app.api.instrumentation import RequestMetrics
from app.api.links import operation_id
from app.api.routes import (
    experiments,
    exports,
    meta,
    metrics,
    prometheus,
    series,
    stream,
    studies,
    study_data,
)
from app.api.schemas import Problem, config_component_schemas
from app.core.config import Settings, get_settings
from app.db.migrate import check_migrated, upgrade
from app.dispatch import CeleryDispatcher, Dispatcher
from app.web import pages

API_PREFIX = "/api/v1"
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing, malformed, unknown or revoked API key"},
    422: {"model": Problem, "description": "A parameter or a body field breaks a rule; "
                                           "`detail` lists each one (loc, msg, type)"},
    503: {"model": Problem, "description": "The database is unavailable; retry shortly"},
}


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.is_sqlite:
            upgrade(settings.database_url)  # embedded mode migrates its own file
        else:
            check_migrated(settings.database_url)  # refuse to serve an unmigrated Postgres
        yield

    app = FastAPI(
        title="NormLab",
        version="1.0",
        summary="Batch-normalization and gradient-clipping training experiments as a service.",
        lifespan=lifespan,
        docs_url=None,  # app.web serves /docs from the package (FastAPI's loads a CDN)
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.dispatcher = dispatcher or CeleryDispatcher(settings)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["ETag"],  # so a dashboard on another origin can send If-None-Match
        )
    for router in (experiments.router, exports.router, metrics.router, series.router,
                   stream.router, meta.router, studies.router, study_data.router):
        app.include_router(router, prefix=API_PREFIX, responses=COMMON_RESPONSES)
    app.add_api_route("/healthz", meta.healthz, include_in_schema=False)
    app.add_api_route("/readyz", meta.readyz, include_in_schema=False)
    app.include_router(prometheus.router, responses=COMMON_RESPONSES)  # GET /metrics
    pages.install(app)
    app.add_middleware(RequestMetrics)  # outermost: counts every answer, 413s included
    _customize_openapi(app)
    return app


# An example value for every parameter, so /docs shows a ready-made request for each route.
PARAMETER_EXAMPLES: dict[str, Any] = {
    "experiment_id": "3f6c2a1e-8d4b-4c1a-9a7e-2b5d0c9e4f11",
    "name": "geron-bn",
    "status": "running",
    "tag": "bn",
    "limit": 100,
    "names": "loss,grad_norm",
    "after_step": -1,
    "points": 500,
    "from_step": 0,
    "to_step": 20000,
    "ids": "3f6c2a1e-8d4b-4c1a-9a7e-2b5d0c9e4f11,9b1d7e52-0c3f-4e8a-b6d2-7a4f1c2e8d90",
    "idempotency-key": "submit-2026-11-26-001",
    "last-event-id": "1200",
    "study_id": "5d2e8c1a-7b3f-4e9d-a1c6-0f4b2d8e6a73",
    "pairs": "first",
    "metric": "val_accuracy",
}


def _customize_openapi(app: FastAPI) -> None:
    """Publish the config's sub-models (the submission body refers to them) and add an example
    to every parameter."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                config_component_schemas()
            )
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    for parameter in operation.get("parameters", []):
                        example = PARAMETER_EXAMPLES.get(parameter["name"].lower())
                        if example is not None and "example" not in parameter:
                            parameter["example"] = example
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
