"""Presets and health."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import CallerDep, DispatcherDep
from app.api.schemas import PresetOut
from app.db import health
from worker.training.config import ExperimentConfig
from worker.training.presets import PRESETS, build_config, preset_info

router = APIRouter(tags=["meta"])


@router.get("/presets", response_model=list[PresetOut])
def list_presets(caller: CallerDep) -> list[PresetOut]:
    """Named configs from the seed text and the BN paper; use one with `"preset": name`. Each
    says its dataset, whether that is downloaded on first use, and the bundled dataset to use
    offline instead (`{"preset": "geron-bn", "dataset": {"name": "mnist_5k"}}`)."""
    caller.check()
    return [PresetOut(**preset_info(name), config=build_config({}, name)) for name in PRESETS]


@router.get("/config/defaults", response_model=ExperimentConfig)
def config_defaults(caller: CallerDep) -> ExperimentConfig:
    """The config every omitted field takes (the dashboard's submit form starts from it)."""
    caller.check()
    return ExperimentConfig()


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is down"}})
def readyz(caller: CallerDep, dispatcher: DispatcherDep) -> JSONResponse:
    """The database is reachable and migrated, and the broker is reachable."""
    checks: dict[str, str] = {}
    with caller.new_session() as session:
        try:
            health.check_database(session, caller.settings.database_url)
            checks["database"] = "ok"
        except Exception as exc:
            session.rollback()
            checks["database"] = f"error: {exc}"
        if checks["database"] == "ok":
            caller.principal(session)  # 401 without a key when auth is on
    # (With the database down nobody can be authenticated; saying only that it is down is fine.)
    try:
        dispatcher.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {exc}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)
