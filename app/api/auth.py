"""Who is calling: the one function from an ``Authorization`` header to a principal, shared by
every route (``app.api.deps``) and the polling fast path (``app.api.polled``), and what this
process knows about whether auth is on."""

from __future__ import annotations

from collections.abc import Callable

from app.api import headers
from app.core.config import Settings
from app.db import keys
from app.db.keys import Principal

LOCAL = Principal(owner="local", admin=True)  # every caller while no key exists (loopback only)


class UnauthorizedError(Exception):
    """No valid key where one is needed; the message says what is wrong (answered with 401)."""


def key_digest(header: str) -> str | None:
    """The stored form of the key in ``Authorization: Bearer <key>`` (None: not a key this
    service could have issued); raises UnauthorizedError for a header of another shape."""
    try:
        token = headers.bearer_token(header)
    except headers.MalformedAuthorizationError as exc:
        raise UnauthorizedError(str(exc)) from exc
    return keys.digest(token)


def authorize(header: str | None, *, auth_on: bool,
              lookup: Callable[[str], Principal | None]) -> Principal:
    """The caller, from the ``Authorization`` header and ``lookup`` (a key's digest → its live
    owner, or None); raises UnauthorizedError. With auth off everyone is the local admin."""
    if not auth_on:
        # No keys anywhere: only possible on a loopback-bound server (`serve` enforces that).
        return LOCAL
    if not header:
        raise UnauthorizedError("missing Authorization header: send 'Authorization: Bearer <key>'")
    found = key_digest(header)
    principal = lookup(found) if found is not None else None
    if principal is None:
        raise UnauthorizedError("invalid or revoked API key")
    return principal


class KeyPresence:
    """The databases this process has seen holding an API key. Auth is on when required, or as
    soon as any key was ever created, and stays on (revoking every key does not open the API
    again): once seen, a database is never asked again."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def known_on(self, settings: Settings) -> bool:
        """Auth is on for sure, without asking the database."""
        return settings.auth == "required" or settings.database_url in self._seen

    def found(self, settings: Settings, keys_exist: bool) -> bool:
        """Record what the database answered; returns whether auth is on."""
        if keys_exist:
            self._seen.add(settings.database_url)
        return keys_exist or self.known_on(settings)

    def forget(self, database_url: str) -> None:
        """For tests that empty a database this process saw keys in."""
        self._seen.discard(database_url)


KEYS_SEEN = KeyPresence()
