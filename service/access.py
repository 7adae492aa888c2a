"""Who may call what: every route's requirement in one table (WHO_MAY_CALL), and its check.

A requirement is one of:

- ANYONE: no credential needed; one that is sent is not looked at.
- SIGNED_IN: a user's access token, member or staff. These routes act as a person (their posts,
  their sessions), so an API key is refused.
- staff or a scope: a staff user's access token, or an API key holding that scope.

Where a credential is needed and none is sent: 401 with WWW-Authenticate. A live credential
without the right: 403, whose detail names what is missing. The app is not built while a route has
no entry here (service.app.route), and tests/test_access.py walks every route against every kind
of caller. Roles change only from the command line (`python -m service user set-role`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from service.auth import (
    Caller,
    PresentedApiKey,
    check_api_key,
    database,
    find_key_caller,
    presented_key_hash,
    unauthorized,
    user_caller,
)
from service.errors import Problem

SET_ROLE_COMMAND = "python -m service user set-role USERNAME staff"

Handler = Callable[..., Awaitable[Response]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True)
class Access:
    """What a route needs. `acting` names the act in a member's 403 ("Reading sales reports")."""

    acting: str = ""
    anonymous: bool = False
    staff_only: bool = False  # users: staff only; otherwise any signed-in user
    key_scope: str | None = None  # API keys holding this scope; None: no API key

    @property
    def who(self) -> str:
        """Who may call, in words (the OpenAPI document's)."""
        if self.anonymous:
            return "anyone, with no credential"
        users = "a staff user" if self.staff_only else "any signed-in user (member or staff)"
        keys = f", or an API key with the {self.key_scope} scope" if self.key_scope else ""
        return f"{users}, with their access token{keys}"

    @property
    def no_credential(self) -> str:
        """The 401's detail when no credential was sent."""
        if not self.staff_only:
            return "Sign in and send the access token as: Authorization: Bearer <token>."
        keys = f" or an API key with the {self.key_scope} scope (X-API-Key)" if self.key_scope else ""
        return f"Send a staff user's access token (Authorization: Bearer <token>){keys}."

    def security(self) -> list[dict[str, list[str]]]:
        """The OpenAPI security requirement: the role or scope named in each scheme's list."""
        if self.anonymous:
            return []
        requirement = [{"bearerAuth": ["staff"] if self.staff_only else []}]
        return requirement + ([{"apiKeyAuth": [self.key_scope]}] if self.key_scope else [])


ANYONE = Access(anonymous=True)
SIGNED_IN = Access()


def staff_or(scope: str, acting: str) -> Access:
    return Access(acting=acting, staff_only=True, key_scope=scope)


RECORD_PURCHASES = staff_or("purchases:write", "Recording purchases")
READ_PURCHASES = staff_or("purchases:read", "Reading purchases and customers")
READ_REPORTS = staff_or("reports:read", "Reading sales reports")

# Every route, by method and path template. Scan this to know who may call what.
WHO_MAY_CALL: dict[str, Access] = {
    # The page, the documents and the probes.
    "GET /": ANYONE,
    "GET /docs": ANYONE,
    "GET /openapi.json": ANYONE,
    "GET /health": ANYONE,
    "GET /ready": ANYONE,
    "GET /metrics": ANYONE,
    # The purchase ledger: staff, or an API key with the scope.
    "POST /purchases": RECORD_PURCHASES,
    "POST /purchases/batch": RECORD_PURCHASES,
    "GET /purchases": READ_PURCHASES,
    "GET /purchases/{id:int}": READ_PURCHASES,
    "GET /customers": READ_PURCHASES,
    "GET /customers/{id:int}": READ_PURCHASES,
    "GET /customers/{id:int}/purchases": READ_PURCHASES,
    "GET /customers/{id:int}/summary": READ_PURCHASES,
    "GET /reports/sales": READ_REPORTS,
    # Accounts: anyone may register and sign in; the rest is the signed-in user's own.
    "POST /auth/register": ANYONE,
    "POST /auth/login": ANYONE,
    "POST /auth/logout": SIGNED_IN,
    "GET /auth/sessions": SIGNED_IN,
    "DELETE /auth/sessions/{id:int}": SIGNED_IN,
    "GET /users/me": SIGNED_IN,
    # The social feed: reads are public, writes are a person's.
    "GET /posts": ANYONE,
    "POST /posts": SIGNED_IN,
    "GET /posts/{id:int}": ANYONE,
    "PATCH /posts/{id:int}": SIGNED_IN,
    "DELETE /posts/{id:int}": SIGNED_IN,
    "GET /posts/{id:int}/comments": ANYONE,
    "POST /posts/{id:int}/comments": SIGNED_IN,
    "PUT /posts/{id:int}/like": SIGNED_IN,
    "DELETE /posts/{id:int}/like": SIGNED_IN,
    "PUT /posts/{id:int}/repost": SIGNED_IN,
    "DELETE /posts/{id:int}/repost": SIGNED_IN,
    "GET /users/{username:username}": ANYONE,
    "GET /users/{username:username}/posts": ANYONE,
    "GET /users/{username:username}/followers": ANYONE,
    "GET /users/{username:username}/following": ANYONE,
    "PUT /users/{username:username}/follow": SIGNED_IN,
    "DELETE /users/{username:username}/follow": SIGNED_IN,
    "GET /feed": SIGNED_IN,
}


class NoAccessEntry(LookupError):
    """A route the table does not name: the app must not be built with it."""


def access_of(method: str, path: str) -> Access:
    try:
        return WHO_MAY_CALL[f"{method} {path}"]
    except KeyError:
        raise NoAccessEntry(f"{method} {path} has no entry in service.access.WHO_MAY_CALL") from None


def checks_key_itself(handler: H) -> H:
    """Mark a route that checks an API key inside its own statement (one round trip on a hot write).

    It receives a `PresentedApiKey` (the key's hash and the scope needed) instead of a `Caller`, and
    raises any Problem (`auth.key_not_live()`, say) when its statement finds no live key with the
    scope. Whatever it answers then (422, 409, 415, 401), the key is looked up: one that is not
    live gets 401, one without the scope 403.
    """
    handler.checks_key_itself = True  # type: ignore[attr-defined]
    return handler


def guarded(access: Access, handler: Handler) -> Handler:
    """`handler` behind `access`: it is called with the request and the caller, once let in."""
    if access.anonymous:
        return handler
    key_checked_by_route = getattr(handler, "checks_key_itself", False)

    @functools.wraps(handler)
    async def checked(request: Request) -> Response:
        caller = await _identify(request, access, key_checked_by_route)
        if not isinstance(caller, PresentedApiKey):
            return await handler(request, caller)
        try:
            return await handler(request, caller)
        except Problem:
            await check_api_key(database(request), caller)  # 401 or 403 first, if that is the answer
            raise

    return checked


async def _identify(request: Request, access: Access, key_checked_by_route: bool) -> Caller | PresentedApiKey:
    """The caller, let in by `access`; 401 without a live credential, 403 without the right."""
    user = await user_caller(request)  # a token is checked first, as it always was
    if user is not None:
        if access.staff_only and user.role != "staff":
            raise _member_refused(access, user)
        return user
    key = request.headers.get("x-api-key")
    if key is None:
        raise unauthorized(access.no_credential)
    key_hash = presented_key_hash(request, key)
    if access.key_scope is None:
        await find_key_caller(database(request), key_hash)  # 401 for a key that is not live
        raise Problem(403, "This route acts as a person: it takes a user's access token, not an API key.")
    presented = PresentedApiKey(key_hash, access.key_scope)
    if key_checked_by_route:
        return presented
    return await check_api_key(database(request), presented)


def _member_refused(access: Access, user: Caller) -> Problem:
    keys = f" (or an API key with the {access.key_scope} scope)" if access.key_scope else ""
    return Problem(
        403,
        f"{access.acting} needs a staff account{keys}; {user.name} is a {user.role}."
        f" An administrator makes staff with: {SET_ROLE_COMMAND}.",
    )
