"""The engine (worker/training) stays pure: no Celery, SQLAlchemy, FastAPI or the service's app."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.waiting import HANG_S

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "worker" / "training"
FORBIDDEN = {"celery", "sqlalchemy", "fastapi", "starlette", "app", "redis", "kombu"}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _engine_files() -> list[Path]:
    return sorted(ENGINE.glob("*.py"))


def test_the_engine_has_modules() -> None:
    names = {p.name for p in _engine_files()}
    assert {"loop.py", "config.py", "job.py", "model.py"} <= names


@pytest.mark.parametrize("path", _engine_files(), ids=lambda p: p.name)
def test_no_service_imports(path: Path) -> None:
    assert not _imported_roots(path) & FORBIDDEN


def test_relative_imports_stay_inside_the_engine() -> None:
    for path in _engine_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name} imports from outside worker/training"


def test_importing_the_job_loads_no_service_library() -> None:
    services = "{'celery', 'sqlalchemy', 'fastapi'}"
    code = (
        "import worker.training.job; import sys; "
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {services}); "
        "assert not loaded, loaded"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=HANG_S
    )
    assert done.returncode == 0, done.stderr
