"""Who may call what: every route of the app against every kind of caller, as service.access says.

The table (WHO_MAY_CALL) is the contract: each route answers anonymous callers, members, staff and
API keys of each scope exactly as its entry says, and a route without an entry has no app.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient

from service.__main__ import main
from service.access import ANYONE, READ_REPORTS, SIGNED_IN, WHO_MAY_CALL, Access, NoAccessEntry
from service.app import TemplatedRoute, create_app, route
from service.config import Settings
from service.responses import JSONResponse
from service.tables import SCOPES
from tests.conftest import bearer, login, make_api_key, make_staff, pooler_settings, register, table_counts
from tests.test_purchases import purchase

REFUSALS = {401, 403}


def app_routes(settings: Settings) -> set[str]:
    """Every "METHOD /path" the app serves (its static files aside)."""
    app = create_app(settings, check_schema=False)
    return {
        f"{method} {served.path}"
        for served in app.routes
        if isinstance(served, TemplatedRoute)
        for method in served.handlers
    }


def test_every_route_has_an_entry_and_every_entry_a_route(sqlite_settings: Settings) -> None:
    assert app_routes(sqlite_settings) == set(WHO_MAY_CALL)


def test_a_route_without_an_entry_is_not_built() -> None:
    async def unlisted(request: Request) -> Response:
        return JSONResponse({})

    with pytest.raises(
        NoAccessEntry, match=re.escape("GET /unlisted has no entry in service.access.WHO_MAY_CALL")
    ):
        route("/unlisted", unlisted)
    with pytest.raises(NoAccessEntry, match=re.escape("DELETE /posts/{id:int}/pin")):
        route("/posts/{id:int}/pin", {"DELETE": unlisted})


# The callers every route is tried with: who they are, and how each kind of entry answers them.
def expected(caller: str, access: Access) -> str:
    """ "let in", or the refusal's status and what its detail must say."""
    if access.anonymous:
        return "let in"
    if caller == "anonymous":
        return "401"
    if caller == "staff":
        return "let in"
    if caller == "member":
        return "403 needs a staff account" if access.staff_only else "let in"
    held = SCOPES if caller == "key:all" else (caller.removeprefix("key:"),)
    if access.key_scope is None:
        return "403 takes a user's access token, not an API key"
    return "let in" if access.key_scope in held else f"403 lacks the {access.key_scope} scope"


CALLERS = ("anonymous", "member", "staff", "key:all", *(f"key:{scope}" for scope in SCOPES))


@pytest.fixture
def credentials(client: TestClient, settings: Settings) -> Callable[[str], dict[str, str]]:
    """`credentials(caller)`: the headers one kind of caller sends (a fresh session for each user
    request, since POST /auth/logout is among the routes tried)."""
    register(client, "mia")
    register(client, "sam")
    make_staff(settings, "sam")
    keys = {"key:all": make_api_key(settings, "all")}
    for scope in SCOPES:
        keys[f"key:{scope}"] = make_api_key(settings, f"only-{scope.replace(':', '-')}", [scope])

    def headers(caller: str) -> dict[str, str]:
        if caller == "anonymous":
            return {}
        if caller in ("member", "staff"):
            return bearer(login(client, "mia" if caller == "member" else "sam"))
        return {"X-API-Key": keys[caller]}

    return headers


def test_every_route_answers_every_kind_of_caller_as_the_table_says(
    client: TestClient, credentials: Callable[[str], dict[str, str]]
) -> None:
    tried, mismatches = 0, []
    for entry, access in WHO_MAY_CALL.items():
        method, template = entry.split(" ", 1)
        # Ids nothing has (404 once let in), and a user who exists; a body that fails validation.
        path = template.replace("{id:int}", "999999").replace("{username:username}", "mia")
        body: dict[str, Any] = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
        for caller in CALLERS:
            response = client.request(method, path, headers=credentials(caller), **body)
            want = expected(caller, access)
            if want == "let in":
                ok = response.status_code not in REFUSALS and response.status_code < 500
            else:
                status, _, words = want.partition(" ")
                ok = response.status_code == int(status) and words in response.json()["detail"]
                ok = ok and response.headers["content-type"] == "application/problem+json"
            if not ok:
                mismatches.append((entry, caller, want, response.status_code, response.text[:200]))
            tried += 1
    assert not mismatches, mismatches
    assert tried == len(WHO_MAY_CALL) * len(CALLERS)


def test_a_fresh_member_can_neither_read_nor_change_the_ledger(
    client: TestClient, settings: Settings, database_url: str
) -> None:
    key = {"X-API-Key": make_api_key(settings, "billing")}
    bought = purchase("ceo@bigcorp.com", "Jane Real", item="secret-thing", unit_price="999.00")
    recorded = client.post("/purchases", json=bought, headers=key).json()
    customer_id, purchase_id = recorded["customer"]["id"], recorded["id"]
    register(client, "mallory")
    member = bearer(login(client, "mallory"))
    before = table_counts(database_url)

    reads = [
        "/customers?email=ceo@bigcorp.com",
        "/customers",
        f"/customers/{customer_id}",
        f"/customers/{customer_id}/purchases",
        f"/customers/{customer_id}/summary",
        "/purchases",
        f"/purchases/{purchase_id}",
        *(f"/reports/sales?group_by={grouping}" for grouping in ("item", "customer", "day")),
    ]
    for path in reads:
        response = client.get(path, headers=member)
        assert response.status_code == 403, (path, response.text)
        assert "ceo@bigcorp.com" not in response.text and "999.00" not in response.text
        assert "needs a staff account" in response.json()["detail"]
    hacked = purchase("ceo@bigcorp.com", "Hacked Name")
    assert client.post("/purchases", json=hacked, headers=member).status_code == 403
    assert client.post("/purchases/batch", json={"purchases": [hacked]}, headers=member).status_code == 403

    assert table_counts(database_url) == before
    customer = client.get(f"/customers/{customer_id}", headers=key).json()
    assert customer["name"] == "Jane Real"


@pytest.fixture
def user_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database_url: str
) -> Callable[..., tuple[int, str]]:
    """`user_cli("set-role", "tim", "staff")` runs `python -m service user ...` on the test's database."""
    for name, value in {"DATABASE_URL": database_url, **pooler_settings(database_url)}.items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str]:
        code = main(["user", *args])
        return code, capsys.readouterr().err

    return run


def test_a_role_change_counts_from_the_users_next_request(
    client: TestClient, user_cli: Callable[..., tuple[int, str]]
) -> None:
    register(client, "tim")
    token = bearer(login(client, "tim"))  # one session throughout: no sign-in again
    assert client.get("/purchases", headers=token).status_code == 403
    assert client.get("/users/me", headers=token).json()["role"] == "member"

    code, said = user_cli("set-role", "tim", "staff")
    assert code == 0 and "tim is now staff" in said
    assert client.get("/purchases", headers=token).status_code == 200
    assert client.post("/purchases", json=purchase(), headers=token).status_code == 201
    assert client.get("/users/me", headers=token).json()["role"] == "staff"

    assert user_cli("set-role", "tim", "member")[0] == 0
    assert client.get("/purchases", headers=token).status_code == 403
    assert client.get("/feed", headers=token).status_code == 200  # still a member of the feed


def test_set_role_refuses_an_unknown_user_and_an_unknown_role(
    client: TestClient, user_cli: Callable[..., tuple[int, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, said = user_cli("set-role", "nobody", "staff")
    assert code == 1 and "there is no user 'nobody'" in said
    register(client, "tim")
    with pytest.raises(SystemExit) as exited:
        main(["user", "set-role", "tim", "admin"])
    assert exited.value.code == 2
    assert "invalid choice: 'admin'" in capsys.readouterr().err


def test_roles_never_change_through_the_api(client: TestClient) -> None:
    register(client, "tim")
    token = bearer(login(client, "tim"))
    attempts = [
        ("PATCH", "/users/me", {"role": "staff"}),
        ("PUT", "/users/me", {"role": "staff"}),
        ("POST", "/users/me", {"role": "staff"}),
    ]
    for method, path, body in attempts:
        assert client.request(method, path, json=body, headers=token).status_code == 405
    registered = client.post(
        "/auth/register",
        json={"username": "eve", "email": "eve@example.com", "password": "long enough", "role": "staff"},
    )
    assert registered.status_code == 422 and "role" in registered.json()["errors"]
    assert client.get("/users/me", headers=token).json()["role"] == "member"


def test_start_up_says_how_to_make_staff_while_nobody_is(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    advice = "no user is staff yet"
    with caplog.at_level(logging.WARNING, logger="service"), TestClient(create_app(settings)) as client:
        register(client, "tim")
    assert any(advice in record.getMessage() for record in caplog.records)
    assert "python -m service user set-role USERNAME staff" in caplog.text

    make_staff(settings, "tim")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service"), TestClient(create_app(settings)):
        pass
    assert not any(advice in record.getMessage() for record in caplog.records)


def test_anyones_routes_ignore_a_dead_credential(client: TestClient) -> None:
    # What ANYONE means: a credential sent to a public route is not looked at.
    assert ANYONE.anonymous
    dead = {"Authorization": "Bearer not-a-token", "X-API-Key": "pfs_never-issued"}
    assert client.get("/posts", headers=dead).status_code == 200
    assert client.get("/health", headers=dead).status_code == 200


def test_each_kind_of_requirement_says_itself_in_the_document_and_the_401() -> None:
    staff_alone = Access(acting="Managing roles", staff_only=True)
    assert staff_alone.who == "a staff user, with their access token"
    assert staff_alone.security() == [{"bearerAuth": ["staff"]}]
    assert staff_alone.no_credential == "Send a staff user's access token (Authorization: Bearer <token>)."
    assert READ_REPORTS.security() == [{"bearerAuth": ["staff"]}, {"apiKeyAuth": ["reports:read"]}]
    assert READ_REPORTS.no_credential == (
        "Send a staff user's access token (Authorization: Bearer <token>) or an API key with the"
        " reports:read scope (X-API-Key)."
    )
    assert SIGNED_IN.security() == [{"bearerAuth": []}] and ANYONE.security() == []


def test_the_start_up_staff_check_reads_only_the_staff_index(sqlite_settings: Settings) -> None:
    # Not a scan of every user (80 ms at a million users on SQLite, 65 ms on PostgreSQL, per worker).
    import sqlite3

    from service.migrations.schema import prepare_schema
    from service.queries import load_queries

    prepare_schema(sqlite_settings.schema_database_url)
    find_staff = load_queries("sqlite").find_staff
    with contextlib.closing(sqlite3.connect(sqlite_settings.database_url.split(":///", 1)[1])) as conn:
        plan = " ".join(str(row) for row in conn.execute(f"EXPLAIN QUERY PLAN {find_staff.sql}"))
    assert "USING INDEX ix_users_staff" in plan, plan
