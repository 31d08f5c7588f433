"""API keys. Only a key's SHA-256 is stored; its first 12 hex digits are the key's public id
(lookups and listings), the whole digest is compared in constant time (``hmac.compare_digest``).
Generated keys are ``nlk_`` + 256 random bits; a bootstrap key may be any 32+ printable
characters."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.experiments import now
from app.db.models import ApiKey
from app.db.records import KeyRecord

KEY_PATTERN = re.compile(r"^[\x21-\x7e]{32,256}$")
OWNER_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: every experiment belongs to an owner; admins see every owner's."""

    owner: str
    admin: bool


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(session: Session, *, owner: str, admin: bool = False, key: str | None = None) -> str:
    """Create a key and return it (the only time it is ever shown). Commits."""
    if not OWNER_PATTERN.match(owner):
        raise ValueError("owner names are 1-64 letters, digits, '_', '.', '@' or '-'")
    if key is None:
        key = f"nlk_{secrets.token_urlsafe(32)}"
    if KEY_PATTERN.match(key) is None:
        raise ValueError("a key is 32 to 256 printable ASCII characters without spaces")
    digest = _digest(key)
    existing = session.get(ApiKey, digest[:12])
    if existing is not None:  # re-creating the bootstrap key at each start is a no-op
        if not hmac.compare_digest(existing.key_hash, digest):
            raise ValueError(f"key id {digest[:12]} is taken; generate another key")
        return key
    session.add(
        ApiKey(key_id=digest[:12], owner=owner, key_hash=digest, admin=admin, created_at=now())
    )
    session.commit()
    return key


def digest(key: str) -> str | None:
    """The stored form of a key (its SHA-256, hex), or None for a malformed key."""
    return _digest(key) if KEY_PATTERN.match(key) is not None else None


def principal_of(
    key_digest: str,
    stored_hash: str | None,
    owner: str | None,
    admin: bool | None,
    revoked_at: object,
) -> Principal | None:
    """The caller, if ``key_digest`` matches the stored key row and the key is not revoked."""
    # Compare even when no row matched, so timing tells nothing about which ids exist.
    matched = hmac.compare_digest(stored_hash or "0" * 64, key_digest)
    if not matched or stored_hash is None or revoked_at is not None or owner is None:
        return None
    return Principal(owner=owner, admin=bool(admin))


def lookup(session: Session, key_digest: str) -> Principal | None:
    """The caller whose key has this digest (``digest``), if that key exists and is live."""
    row = session.get(ApiKey, key_digest[:12])
    if row is None:
        return principal_of(key_digest, None, None, None, None)
    return principal_of(key_digest, row.key_hash, row.owner, row.admin, row.revoked_at)


def any_created(session: Session) -> bool:
    return session.scalar(select(func.count()).select_from(ApiKey)) != 0


def list_keys(session: Session) -> list[KeyRecord]:
    rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at))
    return [KeyRecord.of(row) for row in rows]


def revoke(session: Session, key_id: str) -> bool:
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now())
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]
