"""Tests that need a real service skip on a laptop but must never silently skip in CI."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def required_env(name: str, why: str) -> str:
    """The variable's value; without it, skip locally but FAIL under CI (CI=true)."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if in_ci():
        pytest.fail(f"{name} is not set, and CI=true needs it: {why}", pytrace=False)
    pytest.skip(f"{name} is not set ({why})")
