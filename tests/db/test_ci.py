"""The guard that makes a missing Postgres a failure in CI rather than a quiet skip."""

from __future__ import annotations

import pytest

from tests.db.ci import in_ci, required_env


def test_set_variable_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMLAB_TEST_SOMETHING", "postgresql://x")
    monkeypatch.setenv("CI", "true")
    assert required_env("NORMLAB_TEST_SOMETHING", "test") == "postgresql://x"


@pytest.mark.parametrize("ci", ["true", "True", "1"])
def test_missing_variable_fails_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.delenv("NORMLAB_TEST_SOMETHING", raising=False)
    monkeypatch.setenv("CI", ci)
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match="NORMLAB_TEST_SOMETHING"):
        required_env("NORMLAB_TEST_SOMETHING", "test")


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_missing_variable_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    monkeypatch.setenv("NORMLAB_TEST_SOMETHING", "  ")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception):
        required_env("NORMLAB_TEST_SOMETHING", "test")
