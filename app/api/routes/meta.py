"""Presets and health."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import (
    DispatcherDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    resolve_principal,
)
from app.api.schemas import PresetOut
from app.db import health
from worker.training.config import ExperimentConfig
from worker.training.presets import PRESETS, build_config, preset_info

router = APIRouter(tags=["meta"])


@router.get("/presets", response_model=list[PresetOut])
def list_presets(_: PrincipalDep) -> list[PresetOut]:
    """Named configs from the seed text and the BN paper; use one with `"preset": name`. Each
    says its dataset, whether that is downloaded on first use, and the bundled dataset to use
    offline instead (`{"preset": "geron-bn", "dataset": {"name": "mnist_5k"}}`)."""
    return [PresetOut(**preset_info(name), config=build_config({}, name)) for name in PRESETS]


@router.get("/config/defaults", response_model=ExperimentConfig)
def config_defaults(_: PrincipalDep) -> ExperimentConfig:
    """The config every omitted field takes (the dashboard's submit form starts from it)."""
    return ExperimentConfig()


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is down"}})
def readyz(request: Request, session: SessionDep, settings: SettingsDep,
           dispatcher: DispatcherDep) -> JSONResponse:
    """The database is reachable and migrated, and the broker is reachable."""
    checks: dict[str, str] = {}
    try:
        health.check_database(session, settings.database_url)
        checks["database"] = "ok"
    except Exception as exc:
        session.rollback()
        checks["database"] = f"error: {exc}"
    if checks["database"] == "ok":
        resolve_principal(request, session, settings)  # 401 without a key when auth is on
    # (With the database down nobody can be authenticated; saying only that it is down is fine.)
    try:
        dispatcher.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {exc}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)
