"""Every data route authorizes through ``app.api.deps`` (so a new route cannot forget), and no
route module leans on another."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from app.api import deps
from app.core.config import Settings
from app.main import create_app
from tests.api.helpers import FakeDispatcher

# Routes anyone may call: liveness, the dashboard's page and files, the API's own description.
PUBLIC = {"/healthz", "/api/v1/healthz", "/", "/docs", "/favicon.ico", "/static", "/openapi.json"}
ROUTES_DIR = Path(deps.__file__).parent / "routes"
AUTHORIZING = {deps.get_caller, deps.experiment_access, deps.study_access}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    folder = tmp_path_factory.mktemp("routes")
    return create_app(Settings(database_url=f"sqlite:///{folder}/t.db"),
                      dispatcher=FakeDispatcher())


def routes(app: FastAPI) -> list[tuple[str, BaseRoute]]:
    """(full path, route) of every route, included routers' too."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if contexts is None:  # FastAPI before 0.16x flattens included routers into app.routes
        return [(str(getattr(route, "path", "")), route) for route in app.routes]
    return [(str(c.path), c.original_route) for c in contexts(app.routes)]


def calls(dependant: Dependant) -> Iterator[Callable[..., Any] | None]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from calls(sub)


def test_every_data_route_goes_through_the_caller_dependency(app: FastAPI) -> None:
    checked = []
    for path, route in routes(app):
        if path in PUBLIC:
            continue
        assert isinstance(route, APIRoute), f"{path}: not an API route, and not public"
        found = set(calls(route.dependant))
        assert found & AUTHORIZING, f"{path} does not authorize (CallerDep)"
        if "{experiment_id}" in path:
            assert deps.experiment_access in found, f"{path}: use ExperimentDep"
        if "{study_id}" in path:
            assert deps.study_access in found, f"{path}: use StudyDep"
        checked.append(path)
    assert "/api/v1/experiments/{experiment_id}" in checked


def test_the_public_list_names_only_routes_that_exist(app: FastAPI) -> None:
    missing = PUBLIC - {path for path, _ in routes(app)}
    assert not missing


def test_a_route_without_the_dependency_is_caught() -> None:
    """The check sees through nothing: a route that opens its own session fails it."""
    stray = FastAPI()

    @stray.get("/api/v1/sneaky")
    def sneaky() -> None: ...

    (route,) = [r for p, r in routes(stray) if p == "/api/v1/sneaky"]
    assert isinstance(route, APIRoute)
    assert not set(calls(route.dependant)) & AUTHORIZING


@pytest.mark.parametrize("module", sorted(p.name for p in ROUTES_DIR.glob("*.py")))
def test_route_modules_import_no_other_route_module(module: str) -> None:
    tree = ast.parse((ROUTES_DIR / module).read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names]
    assert not [m for m in imported if m.startswith("app.api.routes")]
