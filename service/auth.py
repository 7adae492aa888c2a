"""Who is calling: the dependency-style decorators a route uses to require a credential."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

from service.apikeys import find_live_api_key
from service.db import Database
from service.errors import Problem


@dataclass(frozen=True, slots=True)
class Caller:
    kind: Literal["api_key", "user"]
    id: int
    name: str

    @property
    def captured_by(self) -> str:
        """How a record names the credential that wrote it: `api_key:billing`, `user:tim`."""
        return f"{self.kind}:{self.name}"


def unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": "Bearer"})


def database(request: Request) -> Database:
    db: Database = request.state.db
    return db


async def api_key_caller(request: Request) -> Caller | None:
    """The caller named by X-API-Key; None without the header; 401 for a key that is not live."""
    key = request.headers.get("x-api-key")
    if key is None:
        return None
    row = await find_live_api_key(database(request), key.strip())
    if row is None:
        raise unauthorized("The API key is not valid or has been revoked.")
    return Caller("api_key", row["id"], row["name"])


Endpoint = Callable[[Request, Caller], Awaitable[Response]]


def requires_api_key(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """Let the route run only for a live API key; the route receives the `Caller`."""

    @functools.wraps(endpoint)
    async def checked(request: Request) -> Response:
        # One pooled connection serves the credential check and the route: one acquire, one release.
        async with database(request).connection():
            caller = await api_key_caller(request)
            if caller is None:
                raise unauthorized("Send an API key in the X-API-Key header.")
            return await endpoint(request, caller)

    return checked
