"""Idempotency-Key: a retry with the same key and body gets the first response and writes nothing.

The claim, the work and the stored response share one transaction. A concurrent request with the
same key waits on the claim (PostgreSQL's unique index, SQLite's write lock) until the first one
commits, then reads and replays its response; if the first one failed, nothing was claimed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.db import Database
from service.errors import Problem
from service.timestamps import utc_now

KEY_LIFETIME = timedelta(hours=24)
_VALID_KEY = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$")


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes
    location: str | None

    def to_response(self, replayed: bool) -> Response:
        headers = {"Location": self.location} if self.location else {}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(self.body, status_code=self.status, headers=headers, media_type="application/json")


def idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key, checked: 1 to 255 printable ASCII characters."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not _VALID_KEY.match(key):
        raise Problem(400, "Idempotency-Key must be 1 to 255 printable ASCII characters.")
    return key


def request_fingerprint(request: Request, body: Any) -> str:
    """Same method, path and JSON (whatever its spacing or key order) -> same fingerprint."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(f"{request.method} {request.url.path}\n".encode() + canonical).hexdigest()


async def run_once(
    db: Database,
    caller: str,
    key: str,
    fingerprint: str,
    work: Callable[[], Awaitable[StoredResponse]],
) -> tuple[StoredResponse, bool]:
    """Run `work` once per (caller, key); return its response and whether this was a replay."""
    now = utc_now()
    async with db.transaction():
        claimed = await db.fetch_one(
            db.sql.claim_idempotency_key,
            {
                "caller": caller,
                "key": key,
                "request_hash": fingerprint,
                "now": now,
                "expired_before": now - KEY_LIFETIME,
            },
        )
        if claimed is None:
            return _stored(
                await db.fetch_one(db.sql.find_idempotency_key, {"caller": caller, "key": key}), fingerprint
            )
        response = await work()
        await db.execute(
            db.sql.save_idempotent_response,
            {
                "caller": caller,
                "key": key,
                "status_code": response.status,
                "response_body": response.body.decode(),
                "location": response.location,
            },
        )
    return response, False


def _stored(row: Any, fingerprint: str) -> tuple[StoredResponse, bool]:
    if row is None or row["status_code"] is None:
        raise Problem(409, "A request with this Idempotency-Key is still in progress; retry shortly.")
    if row["request_hash"] != fingerprint:
        raise Problem(409, "This Idempotency-Key was already used with a different request body.")
    return StoredResponse(row["status_code"], row["response_body"].encode(), row["location"]), True


async def purge_expired_keys(db: Database) -> int:
    return int(await db.execute(db.sql.purge_idempotency_keys, {"expired_before": utc_now() - KEY_LIFETIME}))
