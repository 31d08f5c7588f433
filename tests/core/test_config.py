"""Service settings: where files land."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import Settings


def test_artifacts_default_under_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("NORMLAB_ARTIFACTS_DIR", raising=False)
    settings = Settings()
    assert settings.artifacts_dir == tmp_path / "data" / "artifacts"
    assert settings.checkpoint_path("x").is_relative_to(tmp_path / "data")
    assert Settings(data_dir=tmp_path / "d2").artifacts_dir == tmp_path / "d2" / "artifacts"


def test_artifacts_dir_is_overridable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NORMLAB_ARTIFACTS_DIR", str(tmp_path / "elsewhere"))
    assert Settings(data_dir=tmp_path / "data").artifacts_dir == tmp_path / "elsewhere"
    assert Settings(artifacts_dir=tmp_path / "flag").artifacts_dir == tmp_path / "flag"


def test_a_plain_postgres_url_means_the_driver_normlab_ships() -> None:
    url = "postgresql://postgres@127.0.0.1:5432/normlab"
    expected = "postgresql+psycopg://postgres@127.0.0.1:5432/normlab"
    assert Settings(database_url=url).database_url == expected
    assert Settings(database_url="postgres://h/db").database_url == "postgresql+psycopg://h/db"
    assert Settings(database_url="sqlite:///x.db").is_sqlite


def test_an_unsupported_database_url_is_refused_by_name() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unsupported database URL scheme 'mysql'"):
        Settings(database_url="mysql://h/db")
