"""RFC 9457 problem details: the one shape every error response takes."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """Raise anywhere in a request to answer with problem+json; `errors` maps field paths to messages."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        errors: Mapping[str, list[str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.detail = detail or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = dict(headers or {})
        super().__init__(self.detail)


class ValidationProblem(Problem):
    def __init__(
        self, errors: Mapping[str, list[str]], detail: str = "The request has invalid fields."
    ) -> None:
        super().__init__(422, detail, errors=errors)


def request_id_of(scope: Scope) -> str:
    state = scope.get("state")
    return str(state.get("request_id", "")) if isinstance(state, dict) else ""


def problem_body(
    status: int, detail: str, request_id: str, errors: Mapping[str, list[str]] | None = None
) -> bytes:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }
    if errors is not None:
        body["errors"] = errors
    return orjson.dumps(body)


def problem_response(
    scope: Scope,
    status: int,
    detail: str,
    *,
    errors: Mapping[str, list[str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return Response(
        problem_body(status, detail, request_id_of(scope), errors),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_JSON,
    )


async def handle_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(request.scope, exc.status, exc.detail, errors=exc.errors, headers=exc.headers)


_HTTP_DETAILS = {
    404: "No resource at this address.",
    405: "This address does not accept that method.",
}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (and any HTTPException) as problem+json, keeping headers such as Allow."""
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.detail != HTTPStatus(exc.status_code).phrase else None
    return problem_response(
        request.scope,
        exc.status_code,
        detail or _HTTP_DETAILS.get(exc.status_code, HTTPStatus(exc.status_code).phrase),
        headers=exc.headers,
    )


EXCEPTION_HANDLERS = {Problem: handle_problem, HTTPException: handle_http_exception}
