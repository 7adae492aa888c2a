"""Who is calling: a user's access token or an API key, read and checked (401 unless live).

What a caller may then do is service.access's business. A credential check borrows a pooled
connection for its one statement and gives it back before the route's own work (no connection
idles through validation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from starlette.requests import Request

from service.apikeys import find_live_api_key, hash_key
from service.config import LoginThrottle
from service.db import Database
from service.errors import Problem
from service.rate_limits import limit_rate
from service.timestamps import utc_now
from service.tokens import InvalidToken, read_access_token


@dataclass(frozen=True, slots=True)
class Caller:
    kind: Literal["api_key", "user"]
    id: int
    name: str
    session_id: int | None = None
    role: str | None = None  # a user's: "member" or "staff"
    scopes: frozenset[str] = frozenset()  # an API key's

    @property
    def captured_by(self) -> str:
        """How a record names the credential that wrote it: `api_key:billing`, `user:tim`."""
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class PresentedApiKey:
    """An X-API-Key not looked up yet, and the scope the route needs (see access.checks_key_itself).

    The route checks both inside its own statement - one round trip instead of two on the hottest
    write - and raises `key_not_live()` when that statement finds no live key with the scope (the
    guard then answers 403 instead, if the key is live but lacks the scope).
    """

    key_hash: str
    scope: str


@dataclass(frozen=True)
class AuthSettings:
    """What the lifespan works out once: the signing key, lifetimes, and bcrypt's cost."""

    signing_key: str
    token_ttl: timedelta
    bcrypt_rounds: int
    session_retention: timedelta
    # A real hash of nothing, checked when the username is unknown, so that answer takes as long
    # as a wrong password does.
    dummy_hash: bytes
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)


def unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": "Bearer"})


def database(request: Request) -> Database:
    db: Database = request.state.db
    return db


def auth_settings(request: Request) -> AuthSettings:
    settings: AuthSettings = request.state.auth
    return settings


def key_not_live() -> Problem:
    return unauthorized("The API key is not valid or has been revoked.")


def key_lacks_scope(caller: Caller, scope: str) -> Problem:
    held = " ".join(sorted(caller.scopes)) or "none"
    return Problem(403, f"This API key lacks the {scope} scope (it holds: {held}).")


def presented_key_hash(request: Request, key: str) -> str:
    """The hash of a presented key, counted against its rate limit (429 past it) before any lookup."""
    key = key.strip()
    key_hash = hash_key(key)
    limit_rate(request, "api_key", key_hash, f"API key {key[:10]}...")
    return key_hash


async def find_key_caller(db: Database, key_hash: str) -> Caller:
    """The caller of a presented key, whatever its scopes; 401 unless the key is live."""
    row = await find_live_api_key(db, key_hash)
    if row is None:
        raise key_not_live()
    return Caller("api_key", row["id"], row["name"], scopes=frozenset(row["scopes"].split()))


async def check_api_key(db: Database, presented: PresentedApiKey) -> Caller:
    """The caller of a presented key; 401 unless the key is live, 403 unless it holds the scope."""
    caller = await find_key_caller(db, presented.key_hash)
    if presented.scope not in caller.scopes:
        raise key_lacks_scope(caller, presented.scope)
    return caller


async def user_caller(request: Request) -> Caller | None:
    """The user of a Bearer token; None without the header; 401 unless token and session are live."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, rest = header.partition(" ")
    token = rest.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise unauthorized("Send the access token as: Authorization: Bearer <token>.")
    try:
        user_id, session_id = read_access_token(auth_settings(request).signing_key, token)
    except InvalidToken:
        raise unauthorized("The access token is not valid or has expired.") from None
    limit_rate(request, "user", user_id, f"user id {user_id}")  # the signature is the service's own
    db = database(request)
    row = await db.fetch_one(
        db.sql.find_live_session, {"session_id": session_id, "user_id": user_id, "now": utc_now()}
    )
    if row is None:
        raise unauthorized("The session of this access token has ended; sign in again.")
    return Caller("user", row["user_id"], row["username"], session_id=row["id"], role=row["role"])
