"""API keys: made, listed and revoked from the command line, each with its scopes; a route can
require one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient

from service.__main__ import main
from service.access import READ_PURCHASES, WHO_MAY_CALL
from service.app import create_app, route
from service.auth import Caller
from service.config import Settings
from service.responses import JSONResponse
from tests.conftest import pooler_settings, table_counts
from tests.test_purchases import purchase

CLI = Callable[..., tuple[int, str, str]]


@pytest.fixture
def apikey_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database_url: str) -> CLI:
    """`apikey_cli("create", "billing")` runs `python -m service apikey ...` on the test's database."""
    for name, value in {"DATABASE_URL": database_url, **pooler_settings(database_url)}.items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["apikey", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


async def whoami(request: Request, caller: Caller) -> Response:
    return JSONResponse({"captured_by": caller.captured_by})


@pytest.fixture
def keyed_app(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setitem(WHO_MAY_CALL, "GET /probe/whoami", READ_PURCHASES)
    app = create_app(settings)
    app.router.routes.append(route("/probe/whoami", whoami))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def stored_text(database_url: str) -> str:
    """Everything the api_keys table holds, as one string."""
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.split(":///", 1)[1]) as conn:
            rows = conn.execute("SELECT * FROM api_keys").fetchall()
    else:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT * FROM api_keys").fetchall()
    return repr(rows)


def test_create_prints_the_key_once_and_stores_only_its_hash(apikey_cli: CLI, database_url: str) -> None:
    code, out, err = apikey_cli("create", "billing")
    assert code == 0
    key = out.strip()
    assert key.startswith("pfs_") and len(key) > 40
    assert "shown only this once" in err
    stored = stored_text(database_url)
    assert "billing" in stored
    assert key not in stored
    assert key[10:] not in stored

    code, out, _ = apikey_cli("list")
    assert code == 0
    assert "billing" in out and "live" in out
    assert key not in out


def test_a_live_key_lets_a_route_in_and_names_the_caller(apikey_cli: CLI, keyed_app: TestClient) -> None:
    _, out, _ = apikey_cli("create", "billing")
    response = keyed_app.get("/probe/whoami", headers={"X-API-Key": out.strip()})
    assert response.status_code == 200
    assert response.json() == {"captured_by": "api_key:billing"}


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "pfs_not-a-real-key"}, {"X-API-Key": ""}])
def test_a_missing_or_unknown_key_is_401_with_www_authenticate(
    keyed_app: TestClient, headers: dict[str, str]
) -> None:
    response = keyed_app.get("/probe/whoami", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/problem+json"


def test_a_revoked_key_stops_working_at_once(apikey_cli: CLI, keyed_app: TestClient) -> None:
    _, out, _ = apikey_cli("create", "billing")
    key = out.strip()
    assert keyed_app.get("/probe/whoami", headers={"X-API-Key": key}).status_code == 200

    code, _, err = apikey_cli("revoke", "billing")
    assert code == 0 and "revoked" in err
    assert keyed_app.get("/probe/whoami", headers={"X-API-Key": key}).status_code == 401

    _, out, _ = apikey_cli("list")
    assert "revoked" in out


def test_a_live_name_cannot_be_taken_twice_but_a_revoked_one_can(apikey_cli: CLI) -> None:
    assert apikey_cli("create", "etl")[0] == 0
    code, _, err = apikey_cli("create", "etl")
    assert code == 1 and "exists" in err
    assert apikey_cli("revoke", "etl")[0] == 0
    assert apikey_cli("create", "etl")[0] == 0


def test_revoking_an_unknown_name_says_so(apikey_cli: CLI) -> None:
    code, _, err = apikey_cli("revoke", "nobody")
    assert code == 1 and "no live key named 'nobody'" in err


def test_a_purchase_checks_its_key_in_its_own_statement_and_writes_nothing_for_a_dead_one(
    apikey_cli: CLI, keyed_app: TestClient, database_url: str
) -> None:
    # POST /purchases checks an API key inside the write itself (one round trip): it must still
    # name the caller, refuse a revoked or unknown key with 401 before any other answer, and
    # leave the database as it was.
    _, out, _ = apikey_cli("create", "billing")
    key = {"X-API-Key": out.strip()}
    good = purchase("ann@example.com", "Ann")
    first = keyed_app.post("/purchases", json=good, headers=key)
    assert first.status_code == 201
    assert first.json()["captured_by"] == "api_key:billing"
    assert first.json()["customer_created"] is True
    bad_quantity = purchase("ann@example.com", "Ann", quantity=0)
    assert keyed_app.post("/purchases", json=bad_quantity, headers=key).status_code == 422

    apikey_cli("revoke", "billing")
    before = table_counts(database_url)
    text = {"Content-Type": "text/plain"}
    attempts: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({"json": good}, key),
        ({"json": good}, {**key, "Idempotency-Key": "retry-1"}),
        ({"json": bad_quantity}, key),  # 401, not the 422 the body would earn
        ({"content": b"not json"}, {**key, **text}),  # 401, not 415
        ({"json": good}, {"X-API-Key": "pfs_never-issued"}),
    ]
    for body, headers in attempts:
        response = keyed_app.post("/purchases", **body, headers=headers)
        assert response.status_code == 401, (body, headers, response.text)
        assert response.json()["detail"] == "The API key is not valid or has been revoked."
    assert table_counts(database_url) == before


def test_a_key_made_without_scope_gets_every_scope_and_the_command_says_so(
    apikey_cli: CLI, database_url: str
) -> None:
    code, _, err = apikey_cli("create", "billing")
    assert code == 0
    assert "no --scope given: the key may do everything (purchases:write purchases:read reports:read)" in err
    _, out, _ = apikey_cli("list")
    [line] = out.splitlines()
    assert line.split("\t")[2] == "purchases:write purchases:read reports:read"


def test_scopes_are_repeatable_stored_in_one_order_and_listed(apikey_cli: CLI) -> None:
    code, _, err = apikey_cli("create", "dashboards", "--scope", "reports:read", "--scope", "purchases:read")
    assert code == 0
    assert "no --scope given" not in err
    assert "with scopes purchases:read reports:read" in err
    apikey_cli("create", "till", "--scope", "purchases:write", "--scope", "purchases:write")
    _, out, _ = apikey_cli("list")
    scopes = {line.split("\t")[0]: line.split("\t")[2] for line in out.splitlines()}
    assert scopes == {"dashboards": "purchases:read reports:read", "till": "purchases:write"}


def test_an_unknown_scope_is_refused_by_the_command(
    apikey_cli: CLI, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        apikey_cli("create", "billing", "--scope", "admin")
    assert exited.value.code == 2
    assert "invalid choice: 'admin'" in capsys.readouterr().err
    assert apikey_cli("list")[1] == ""


def test_a_key_without_the_routes_scope_is_403_naming_it(apikey_cli: CLI, keyed_app: TestClient) -> None:
    _, out, _ = apikey_cli("create", "till", "--scope", "purchases:write")
    response = keyed_app.get("/probe/whoami", headers={"X-API-Key": out.strip()})
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert (
        response.json()["detail"]
        == "This API key lacks the purchases:read scope (it holds: purchases:write)."
    )


def test_a_purchase_with_a_key_that_may_not_write_is_403_and_writes_nothing(
    apikey_cli: CLI, keyed_app: TestClient, database_url: str
) -> None:
    # The scope is checked in the purchase's own statement too: no row, then 403 (not 401), on
    # every path - plain, idempotent, and a body that would have earned 422 or 415.
    _, out, _ = apikey_cli("create", "dashboards", "--scope", "reports:read", "--scope", "purchases:read")
    key = {"X-API-Key": out.strip()}
    before = table_counts(database_url)
    good = purchase("ann@example.com", "Ann")
    attempts: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("/purchases", {"json": good}, key),
        ("/purchases", {"json": good}, {**key, "Idempotency-Key": "retry-1"}),
        ("/purchases", {"json": purchase("ann@example.com", "Ann", quantity=0)}, key),
        ("/purchases", {"content": b"not json"}, {**key, "Content-Type": "text/plain"}),
        ("/purchases/batch", {"json": {"purchases": [good]}}, key),
    ]
    for path, body, headers in attempts:
        response = keyed_app.post(path, **body, headers=headers)
        assert response.status_code == 403, (path, body, headers, response.text)
        assert "lacks the purchases:write scope" in response.json()["detail"]
    assert table_counts(database_url) == before
    assert keyed_app.get("/purchases", headers=key).status_code == 200  # what it may do, it can
