"""Every error is problem+json with a request id, and no stack trace or SQL ever reaches a body.

The foundation has no business routes yet, so these probe routes sit on the real app - its real
middleware, handlers and validation helpers - to show each status the contract names.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from marshmallow import Schema, fields
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient

from service.access import ANYONE, WHO_MAY_CALL
from service.app import create_app, route
from service.config import Settings
from service.errors import Problem
from service.responses import JSONResponse
from service.validation import read_valid_json


class EchoSchema(Schema):
    name = fields.String(required=True)
    tags = fields.List(fields.Integer(), load_default=list)


async def echo(request: Request) -> Response:
    return JSONResponse(await read_valid_json(request, EchoSchema()))


async def conflict(request: Request) -> Response:
    raise Problem(409, "That name is taken.")


async def crash(request: Request) -> Response:
    raise sqlite3.ProgrammingError("SELECT secret FROM users WHERE password = 'hunter2'")


async def database_gone(request: Request) -> Response:
    raise ConnectionRefusedError("connect call failed ('127.0.0.1', 5432)")


@pytest.fixture
def probe(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    for name in ("POST /probe/echo", "GET /probe/conflict", "GET /probe/crash", "GET /probe/database-gone"):
        monkeypatch.setitem(WHO_MAY_CALL, name, ANYONE)
    app = create_app(settings)
    app.router.routes.extend(
        [
            route("/probe/echo", {"POST": echo}),
            route("/probe/conflict", conflict),
            route("/probe/crash", crash),
            route("/probe/database-gone", database_gone),
        ]
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def assert_problem(response: object, status: int) -> dict[str, object]:
    assert response.status_code == status  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    body: dict[str, object] = response.json()  # type: ignore[attr-defined]
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]  # type: ignore[attr-defined]
    return body


def test_unknown_address_is_404(probe: TestClient) -> None:
    assert_problem(probe.get("/no/such/thing"), 404)


def test_wrong_method_is_405_with_allow(probe: TestClient) -> None:
    response = probe.delete("/health")
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]


def test_malformed_json_is_400(probe: TestClient) -> None:
    body = assert_problem(
        probe.post("/probe/echo", content=b'{"name": ', headers={"content-type": "application/json"}), 400
    )
    assert "not valid JSON" in str(body["detail"])


def test_non_utf8_body_is_400(probe: TestClient) -> None:
    response = probe.post(
        "/probe/echo", content=b'{"name": "\xff\xfe"}', headers={"content-type": "application/json"}
    )
    assert_problem(response, 400)


def test_empty_body_is_400(probe: TestClient) -> None:
    assert_problem(probe.post("/probe/echo", content=b"", headers={"content-type": "application/json"}), 400)


def test_wrong_content_type_is_415(probe: TestClient) -> None:
    assert_problem(probe.post("/probe/echo", content=b"name=x", headers={"content-type": "text/plain"}), 415)
    assert_problem(probe.post("/probe/echo", content=b'{"name": "x"}'), 415)


def test_invalid_fields_are_422_keyed_by_path(probe: TestClient) -> None:
    response = probe.post("/probe/echo", json={"tags": [1, "two"], "extra": True})
    body = assert_problem(response, 422)
    assert body["errors"] == {
        "name": ["Missing data for required field."],
        "tags.1": ["Not a valid integer."],
        "extra": ["Unknown field."],
    }


def test_a_json_array_where_an_object_belongs_is_422(probe: TestClient) -> None:
    body = assert_problem(probe.post("/probe/echo", json=[1, 2]), 422)
    assert body["errors"] == {"body": ["Invalid input type."]}


def test_valid_body_passes(probe: TestClient) -> None:
    assert probe.post("/probe/echo", json={"name": "tim", "tags": [1]}).json() == {"name": "tim", "tags": [1]}


def test_conflict_is_409(probe: TestClient) -> None:
    assert_problem(probe.get("/probe/conflict"), 409)


def test_declared_oversized_body_is_413_before_it_is_read(probe: TestClient, settings: Settings) -> None:
    too_big = b"x" * (settings.max_body_bytes + 1)
    body = assert_problem(
        probe.post("/probe/echo", content=too_big, headers={"content-type": "application/json"}), 413
    )
    assert str(settings.max_body_bytes) in str(body["detail"])


def test_streamed_oversized_body_is_413(probe: TestClient, settings: Settings) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as it arrives
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b" " * 65536

    response = probe.post("/probe/echo", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(response, 413)


def test_unexpected_failure_is_500_without_trace_or_sql(probe: TestClient) -> None:
    response = probe.get("/probe/crash")
    body = assert_problem(response, 500)
    text = response.text
    for leak in ("Traceback", "SELECT", "hunter2", "ProgrammingError", ".py"):
        assert leak not in text
    assert body["detail"] == "An unexpected error occurred; it has been logged."


def test_unreachable_database_is_503(probe: TestClient) -> None:
    response = probe.get("/probe/database-gone")
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "1"
    # The exception named the address; nothing of it may show (the random request id may hold any digits).
    body = response.json()
    del body["request_id"]
    assert "5432" not in str(body) and "127.0.0.1" not in str(body)


def test_every_response_carries_a_request_id(probe: TestClient) -> None:
    for response in (probe.get("/health"), probe.get("/nope"), probe.get("/probe/crash")):
        assert len(response.headers["x-request-id"]) == 32


def test_a_sane_caller_request_id_is_echoed(probe: TestClient) -> None:
    response = probe.get("/health", headers={"X-Request-ID": "checkout-42.retry_1"})
    assert response.headers["x-request-id"] == "checkout-42.retry_1"


@pytest.mark.parametrize("bad_id", ["a b", "x" * 129, "id\u00e9", "<script>"])
def test_an_insane_caller_request_id_is_replaced(probe: TestClient, bad_id: str) -> None:
    response = probe.get("/health", headers={"X-Request-ID": bad_id.encode()})
    assert response.headers["x-request-id"] != bad_id
    assert len(response.headers["x-request-id"]) == 32


def test_a_client_that_hangs_up_mid_body_is_499_not_an_error(
    probe: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import logging

    from service.metrics import REQUESTS

    app = probe.app
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/probe/echo",
        "raw_path": b"/probe/echo",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("test", 1),
        "root_path": "",
        "state": {},
    }
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    before = REQUESTS.labels("/probe/echo", "POST", "499")._value.get()
    caplog.set_level(logging.INFO)
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert sent == []  # nobody is listening: nothing is sent
    assert REQUESTS.labels("/probe/echo", "POST", "499")._value.get() == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
