"""The API test fixtures (a fresh SQLite app per test) for the page tests."""

from tests.api.conftest import client, dispatcher, settings

__all__ = ["client", "dispatcher", "settings"]
