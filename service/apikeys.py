"""API keys for machine callers: made and revoked from the command line, stored only as a hash.

Keys are 256 random bits, so one SHA-256 is enough to make the stored hash useless to a thief;
a slow password hash would only slow down every request.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from typing import Any

from service.db import Database, is_unique_violation
from service.tables import SCOPES
from service.timestamps import from_database, utc_now

KEY_PREFIX = "pfs_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyNameTaken(ValueError):
    pass


async def create_api_key(db: Database, name: str, scopes: Iterable[str]) -> tuple[str, dict[str, Any]]:
    """Make a key named `name` that may do `scopes` (see service.access); return the key (shown
    once) and its stored row."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    held = set(scopes)
    if not held or not held <= set(SCOPES):
        raise ValueError(f"scopes must be some of {' '.join(SCOPES)}, got {sorted(held)}")
    stored = " ".join(scope for scope in SCOPES if scope in held)
    try:
        row = await db.fetch_one(
            db.sql.create_api_key,
            {
                "name": name,
                "key_hash": hash_key(key),
                "key_prefix": key[:10],
                "scopes": stored,
                "created_at": utc_now(),
            },
        )
    except Exception as exc:
        if is_unique_violation(exc):
            raise KeyNameTaken(name) from None
        raise
    assert row is not None
    return key, {**dict(row), "created_at": from_database(row["created_at"])}


async def find_live_api_key(db: Database, key_hash: str) -> Any | None:
    """The live key row (id, name) with this hash (`hash_key` of the presented key), or None."""
    return await db.fetch_one(db.sql.find_live_api_key, {"key_hash": key_hash})


async def list_api_keys(db: Database) -> list[dict[str, Any]]:
    rows = await db.fetch_all(db.sql.list_api_keys, {})
    return [
        {
            **dict(row),
            "created_at": from_database(row["created_at"]),
            "revoked_at": from_database(row["revoked_at"]),
        }
        for row in rows
    ]


async def revoke_api_key(db: Database, name: str) -> bool:
    """Revoke the live key called `name`; False if there is none."""
    changed: int = await db.execute(db.sql.revoke_api_key, {"name": name, "revoked_at": utc_now()})
    return changed > 0
