"""Who is calling: the dependency-style decorators a route uses to require a credential.

`@requires_user` lets in a user's access token; `@requires_caller` a user's token or an API key.
Either way the route receives a `Caller`. The credential check borrows a pooled connection for its
one statement and gives it back before the route's own work (no connection idles through validation).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

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

    @property
    def captured_by(self) -> str:
        """How a record names the credential that wrote it: `api_key:billing`, `user:tim`."""
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class PresentedApiKey:
    """An X-API-Key not looked up yet (routes under `@requires_caller_checking_key_itself`).

    The route checks it inside its own statement - one round trip instead of two on the hottest
    write - and answers 401 when that statement finds no live key.
    """

    key_hash: str


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


async def api_key_caller(request: Request) -> Caller | None:
    """The caller named by X-API-Key; None without the header; 401 for a key that is not live."""
    key = request.headers.get("x-api-key")
    if key is None:
        return None
    presented = present_api_key(request, key)
    return await check_api_key(database(request), presented)


def present_api_key(request: Request, key: str) -> PresentedApiKey:
    """The key as presented, counted against its rate limit (429 past it) before it is looked up."""
    key = key.strip()
    presented = PresentedApiKey(hash_key(key))
    limit_rate(request, "api_key", presented.key_hash, f"API key {key[:10]}...")
    return presented


async def check_api_key(db: Database, presented: PresentedApiKey) -> Caller:
    """The caller of a presented key; 401 unless the key is live."""
    row = await find_live_api_key(db, presented.key_hash)
    if row is None:
        raise key_not_live()
    return Caller("api_key", row["id"], row["name"])


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
    return Caller("user", row["user_id"], row["username"], session_id=row["id"])


Endpoint = Callable[[Request, Caller], Awaitable[Response]]
Route = Callable[[Request], Awaitable[Response]]


def _requiring(
    find: Callable[[Request], Awaitable[Caller | None]], missing: str, security: list[dict[str, list[str]]]
) -> Callable[[Endpoint], Route]:
    def decorate(endpoint: Endpoint) -> Route:
        @functools.wraps(endpoint)
        async def checked(request: Request) -> Response:
            caller = await find(request)
            if caller is None:
                raise unauthorized(missing)
            return await endpoint(request, caller)

        checked.security = security  # type: ignore[attr-defined]  # for the OpenAPI document
        return checked

    return decorate


async def _user_or_api_key(request: Request) -> Caller | None:
    return await user_caller(request) or await api_key_caller(request)


def requires_caller_checking_key_itself(
    endpoint: Callable[[Request, Caller | PresentedApiKey], Awaitable[Response]],
) -> Route:
    """`@requires_caller`, except that an API key reaches the route unchecked, as a PresentedApiKey.

    The route must check it (in its own statement, or with `check_api_key`). Whatever else the route
    answers - 422, 409, 415 - a key that is not live gets 401 instead, as on every other route.
    """
    user_route = requires_caller(endpoint)

    @functools.wraps(endpoint)
    async def checked(request: Request) -> Response:
        key = request.headers.get("x-api-key")
        if key is None or "authorization" in request.headers:
            return await user_route(request)  # a token (checked first, as everywhere), or nothing: 401
        presented = present_api_key(request, key)
        try:
            return await endpoint(request, presented)
        except Problem:
            await check_api_key(database(request), presented)  # 401 first, if the key is not live
            raise

    checked.security = user_route.security  # type: ignore[attr-defined]
    return checked


BEARER: dict[str, list[str]] = {"bearerAuth": []}
API_KEY: dict[str, list[str]] = {"apiKeyAuth": []}
requires_user = _requiring(
    user_caller, "Sign in and send the access token as: Authorization: Bearer <token>.", [BEARER]
)
requires_caller = _requiring(
    _user_or_api_key,
    "Send an access token (Authorization: Bearer <token>) or an API key (X-API-Key).",
    [BEARER, API_KEY],
)
# Routes that serve machines only.
requires_api_key = _requiring(api_key_caller, "Send an API key in the X-API-Key header.", [API_KEY])
