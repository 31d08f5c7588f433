"""The records app.db hands out: the general path (ORM) and the polling fast path (one
statement) build the same record, and nothing outside app/db touches the ORM or writes SQL."""

from __future__ import annotations

import ast
import dataclasses
import uuid
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app.db import experiments, keys, lifecycle, polling
from app.db.models import Base
from app.db.records import EXPERIMENT_FIELDS, ExperimentRecord, KeyRecord
from app.db.session import engine_for

ROOT = Path(__file__).resolve().parents[2]
ORM_CLASSES = {mapper.class_.__name__ for mapper in Base.registry.mappers}
QUERY_BUILDERS = {"select", "insert", "update", "delete", "text", "exists"}


def test_fast_and_general_paths_build_the_same_record(session: Session, db_url: str) -> None:
    record, _ = experiments.create(session, config={"name": "r", "x": [1, 2]}, tags=["b", "a"])
    lease = lifecycle.claim(session, record.id, worker="w")
    assert lease is not None
    with session.begin():
        lifecycle.finish(session, lease, status="succeeded", summary={"steps": 3, "nan": None})
    general = experiments.get(session, record.id)
    with engine_for(db_url).connect() as connection:
        rows = polling.experiment_rows(connection, record.id, None, probe_keys=True)
    fast = ExperimentRecord.from_values(polling.record_values(rows[0]))
    assert general == fast
    assert fast.status == "succeeded" and fast.summary == {"steps": 3, "nan": None}
    assert fast.created_at.tzinfo is not None  # SQLite's naive stamps come back as UTC
    assert [r.tag for r in rows] == ["a", "b"]


def test_the_record_fields_are_columns_of_the_same_name() -> None:
    columns = set(Base.metadata.tables["experiments"].columns.keys())
    assert set(EXPERIMENT_FIELDS) <= columns


def test_stored_values_come_back_as_records_never_rows(session: Session) -> None:
    record, _ = experiments.create(session, config={"name": "r"}, tags=[])
    page = experiments.list_page(session, limit=5)
    keys.create(session, owner="alice")
    for found in (record, experiments.get(session, record.id), *page.items,
                  *keys.list_keys(session)):
        assert dataclasses.is_dataclass(found), found
    assert isinstance(keys.list_keys(session)[0], KeyRecord)
    assert experiments.get(session, uuid.uuid4()) is None


def _outside_the_store() -> list[Path]:
    folders = [ROOT / "app", ROOT / "worker"]
    return sorted(p for folder in folders for p in folder.rglob("*.py")
                  if ROOT / "app" / "db" not in p.parents)


@pytest.mark.parametrize("path", _outside_the_store(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_orm_class_or_query_builder_outside_app_db(path: Path) -> None:
    """Constants of ``app.db.models`` (MAX_STEP, FINITE, …) may be used anywhere; its tables
    and SQLAlchemy's statement builders only in app/db."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "app.db.models":
            assert not {a.name for a in node.names} & ORM_CLASSES, path
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            assert not {a.name for a in node.names} & QUERY_BUILDERS, path
        if isinstance(node, ast.Import):
            assert not any(a.name == "app.db.models" for a in node.names), path
