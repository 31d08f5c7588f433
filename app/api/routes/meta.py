"""Presets and health."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import DispatcherDep, SessionDep, SettingsDep
from app.api.schemas import PresetOut
from app.db import health
from worker.training.presets import PRESET_DESCRIPTIONS, PRESETS, build_config

router = APIRouter(tags=["meta"])


@router.get("/presets", response_model=list[PresetOut])
def list_presets() -> list[PresetOut]:
    """Named configs from the seed text and the BN paper; use one with `"preset": name`."""
    return [
        PresetOut(name=name, description=PRESET_DESCRIPTIONS[name], config=build_config({}, name))
        for name in PRESETS
    ]


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is down"}})
def readyz(session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep) -> JSONResponse:
    """The database is reachable and migrated, and the broker is reachable."""
    checks: dict[str, str] = {}
    try:
        health.check_database(session, settings.database_url)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc}"
    try:
        dispatcher.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {exc}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)
