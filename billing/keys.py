"""API keys: ``va_<prefix>_<secret>``, shown once, stored as a salted SHA-256 hash.

Only the prefix (to find the row), a random salt and ``sha256(salt + key)`` are stored;
the plaintext exists only in the return value of :func:`issue_key` / :func:`rotate_key`.
None of these functions commit: the caller's transaction makes a change (for a rotation,
the new key and the old key's revocation together) all or nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from storage.models import ApiKey, User, utcnow

KEY_SCHEME = "va"
LAST_USED_RESOLUTION = timedelta(seconds=60)
"""``last_used_at`` is written at most this often per key: a write on every request would
make one hot row (and, on SQLite, the database's only write lock) a bottleneck."""

_PREFIX_HEX_CHARS = 12
_SECRET_BYTES = 32
# hex prefix (never contains "_"), then a urlsafe secret (which may)
_KEY_PATTERN = re.compile(
    rf"^{KEY_SCHEME}_([0-9a-f]{{{_PREFIX_HEX_CHARS}}})_([A-Za-z0-9_-]{{20,100}})$"
)


class KeyRevokedError(Exception):
    """The key was revoked; a revoked key cannot be rotated."""


def key_prefix_of(plaintext: str) -> str | None:
    """The lookup prefix of a well-formed key, or None. Reveals nothing secret: the
    prefix is stored and shown in listings."""
    match = _KEY_PATTERN.match(plaintext)
    return match.group(1) if match else None


def looks_like_key(value: str) -> bool:
    """True when ``value`` starts like one of our keys (to refuse keys sent in the wrong
    place, even malformed ones)."""
    return value.startswith(f"{KEY_SCHEME}_")


def issue_key(session: Session, user: User) -> tuple[ApiKey, str]:
    """A new key for ``user`` in the user's organisation: the row (added and flushed, so it
    has an id) and the plaintext, which is not stored anywhere and cannot be shown again."""
    if user.id is None:
        raise ValueError("the user must be saved before a key is issued for it")
    prefix = secrets.token_hex(_PREFIX_HEX_CHARS // 2)
    plaintext = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    salt = secrets.token_hex(16)
    api_key = ApiKey(
        organisation_id=user.organisation_id,
        user_id=user.id,
        prefix=prefix,
        salt=salt,
        key_hash=_hash(salt, plaintext),
    )
    session.add(api_key)
    session.flush()
    return api_key, plaintext


def authenticate(
    session: Session, plaintext: str, *, now: datetime | None = None
) -> tuple[ApiKey, User] | None:
    """The key and its user when ``plaintext`` is a valid, unrevoked key; otherwise None.

    Marks the key used (``last_used_at``, at most once per :data:`LAST_USED_RESOLUTION`);
    the caller commits that.
    """
    prefix = key_prefix_of(plaintext)
    if prefix is None:
        return None
    row = session.exec(
        select(ApiKey, User)
        .join(User, col(User.id) == ApiKey.user_id)
        .where(ApiKey.prefix == prefix)
    ).first()
    if row is None:
        return None
    api_key, user = row
    if not hmac.compare_digest(api_key.key_hash, _hash(api_key.salt, plaintext)):
        return None
    if api_key.revoked_at is not None:
        return None
    now = now or utcnow()
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION:
        api_key.last_used_at = now
        session.add(api_key)
    return api_key, user


def revoke_key(session: Session, api_key: ApiKey, *, now: datetime | None = None) -> None:
    """Revoke ``api_key`` (no-op when it is already revoked); the caller commits."""
    if api_key.revoked_at is None:
        api_key.revoked_at = now or utcnow()
        session.add(api_key)


def rotate_key(session: Session, api_key: ApiKey) -> tuple[ApiKey, str]:
    """A new key for the same user and ``api_key`` revoked, in the caller's transaction.

    Raises KeyRevokedError when ``api_key`` is already revoked (a revoked key is not a
    credential any more, so it cannot be exchanged for a new one).
    """
    if api_key.revoked_at is not None:
        raise KeyRevokedError(f"key {api_key.prefix} is revoked")
    user = session.get(User, api_key.user_id)
    if user is None:
        raise ValueError(f"key {api_key.prefix} has no user")
    revoke_key(session, api_key)
    return issue_key(session, user)


def _hash(salt: str, plaintext: str) -> str:
    return hashlib.sha256((salt + plaintext).encode()).hexdigest()
