"""Fixtures for the engine tests (CPU only, small data)."""

from __future__ import annotations

import pytest

from worker.training.config import DatasetConfig
from worker.training.datasets import DataSplits, load_dataset


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    """scikit-learn's 8x8 digits, split 1258 / 180 / 359 with seed 0 (bundled: no network)."""
    return load_dataset(DatasetConfig(name="digits"), seed=0)
