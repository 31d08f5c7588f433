"""The one function from an Authorization header to a caller (app.api.auth)."""

from __future__ import annotations

import pytest

from app.api.auth import LOCAL, KeyPresence, UnauthorizedError, authorize
from app.core.config import Settings
from app.db import keys
from app.db.keys import Principal

ALICE = Principal(owner="alice", admin=False)
KEY = "k" * 40


def lookup(digest: str) -> Principal | None:
    return ALICE if digest == keys.digest(KEY) else None


def test_with_auth_off_everyone_is_the_local_admin_whatever_they_send() -> None:
    assert authorize(None, auth_on=False, lookup=lookup) == LOCAL
    assert authorize("Basic abc", auth_on=False, lookup=lookup) == LOCAL


def test_a_live_key_is_its_owner() -> None:
    assert authorize(f"Bearer {KEY}", auth_on=True, lookup=lookup) == ALICE
    assert authorize(f"bearer  {KEY} ", auth_on=True, lookup=lookup) == ALICE


@pytest.mark.parametrize(("header", "message"), [
    (None, "missing Authorization header"),
    ("", "missing Authorization header"),
    ("Basic abc", "Bearer"),
    (f"Bearer {'x' * 40}", "invalid or revoked API key"),  # no such key
    ("Bearer short", "invalid or revoked API key"),  # no key this service issues
])
def test_anything_else_is_unauthorized(header: str | None, message: str) -> None:
    with pytest.raises(UnauthorizedError, match=message):
        authorize(header, auth_on=True, lookup=lookup)


def test_a_malformed_key_is_never_looked_up() -> None:
    def refuse(digest: str) -> Principal | None:
        raise AssertionError(digest)

    with pytest.raises(UnauthorizedError):
        authorize("Bearer short", auth_on=True, lookup=refuse)


def test_key_presence_stays_on_once_seen_and_forgets_only_when_told() -> None:
    presence = KeyPresence()
    settings = Settings(database_url="sqlite:///seen.db")
    assert not presence.known_on(settings)
    assert not presence.found(settings, keys_exist=False)
    assert presence.found(settings, keys_exist=True)
    assert presence.found(settings, keys_exist=False)  # every key revoked: still on
    assert presence.known_on(settings)
    presence.forget(settings.database_url)
    assert not presence.known_on(settings)
    assert presence.known_on(settings.model_copy(update={"auth": "required"}))
