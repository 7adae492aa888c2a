"""Accounts and sessions: register, sign in, sign out, see and end sessions."""

from __future__ import annotations

import asyncio
import multiprocessing
import stat
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from starlette.testclient import TestClient

from service import accounts
from service.auth import AuthSettings
from service.config import Settings, load_settings
from service.db import open_database
from service.housekeeping import purge_once
from service.login_throttle import count_attempt
from service.timestamps import utc_now
from service.tokens import secret_key_path, signing_key
from tests.conftest import PASSWORD, PASSWORDS_SENT, bearer, login, make_staff, register, table_counts
from tests.test_purchases import purchase


def test_register_returns_the_user_and_never_the_password(client: TestClient) -> None:
    PASSWORDS_SENT.add(PASSWORD)
    response = client.post(
        "/auth/register", json={"username": "tim", "email": "Tim@Example.com", "password": PASSWORD}
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "username", "email", "role", "created_at"}
    assert body["role"] == "member"
    assert (body["username"], body["email"]) == ("tim", "tim@example.com")
    assert response.headers["location"] == "/users/tim"


def test_a_taken_username_or_email_is_409_naming_it(client: TestClient, database_url: str) -> None:
    register(client, "tim")
    same_name = client.post(
        "/auth/register", json={"username": "tim", "email": "x@example.com", "password": PASSWORD}
    )
    assert same_name.status_code == 409
    assert same_name.json()["errors"] == {"username": ["Already taken."]}
    same_email = client.post(
        "/auth/register", json={"username": "tom", "email": "TIM@example.com", "password": PASSWORD}
    )
    assert same_email.status_code == 409
    assert same_email.json()["errors"] == {"email": ["Already registered."]}
    assert table_counts(database_url)["users"] == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("username", "Tim", "lower-case"),
        ("username", "ti", "3 to 32"),
        ("username", "t" * 33, "3 to 32"),
        ("username", "tim-smith", "lower-case"),
        ("email", "tim", "email"),
        ("password", "short", "at least 8"),
        ("password", "x" * 73, "at most 72 bytes"),
        ("password", "\u00e9" * 37, "this one is 74 bytes"),  # 37 characters, 74 bytes
    ],
)
def test_bad_registrations_are_422_and_say_why(
    client: TestClient, database_url: str, field: str, value: str, message: str
) -> None:
    account = {"username": "tim", "email": "tim@example.com", "password": PASSWORD, field: value}
    response = client.post("/auth/register", json=account)
    assert response.status_code == 422
    assert message in " ".join(response.json()["errors"][field]).lower().replace(
        "72 bytes in utf-8", "72 bytes"
    )
    assert table_counts(database_url)["users"] == 0


def test_a_password_of_exactly_72_bytes_is_accepted(client: TestClient) -> None:
    register(client, "tim", "\u00e9" * 36)  # 72 bytes
    login(client, "tim", "\u00e9" * 36)


def test_login_gives_a_bearer_token_for_a_new_session(client: TestClient, database_url: str) -> None:
    register(client)
    response = client.post("/auth/login", json={"username": "tim", "password": PASSWORD})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert isinstance(body["session_id"], int) and body["access_token"].count(".") == 2
    assert table_counts(database_url)["sessions"] == 1
    me = client.get("/users/me", headers=bearer(body))
    assert me.status_code == 200 and me.json()["username"] == "tim"


def test_login_takes_the_oauth2_password_form(client: TestClient) -> None:
    register(client)
    form = {"grant_type": "password", "username": "tim", "password": PASSWORD, "scope": "", "client_id": "x"}
    response = client.post("/auth/login", data=form)
    assert response.status_code == 200
    assert client.get("/users/me", headers=bearer(response.json())).status_code == 200
    wrong_grant = client.post("/auth/login", data={**form, "grant_type": "client_credentials"})
    assert wrong_grant.status_code == 422 and "grant_type" in wrong_grant.json()["errors"]


def test_unknown_user_and_wrong_password_get_the_same_401_after_the_same_work(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(client)
    checks: list[bytes] = []
    real_checkpw = bcrypt.checkpw

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        checks.append(hashed)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting_checkpw)
    wrong = client.post("/auth/login", json={"username": "tim", "password": "not the password"})
    unknown = client.post("/auth/login", json={"username": "nobody", "password": "not the password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"] == "Wrong username or password."
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"] == "Bearer"
    # One real bcrypt check each: against tim's hash, and against the dummy hash of the same cost.
    assert len(checks) == 2 and checks[0] != checks[1]
    assert checks[0][:7] == checks[1][:7]  # "$2b$04$": same algorithm and cost


def test_bcrypt_never_runs_on_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    on_loop: list[str] = []

    def watch(name: str, real: Any) -> Any:
        def run(*args: Any) -> Any:
            try:
                asyncio.get_running_loop()
                on_loop.append(name)
            except RuntimeError:
                pass  # a worker thread: no loop here, as it should be
            return real(*args)

        return run

    monkeypatch.setattr(bcrypt, "hashpw", watch("hashpw", bcrypt.hashpw))
    monkeypatch.setattr(bcrypt, "checkpw", watch("checkpw", bcrypt.checkpw))
    register(client)
    login(client)
    client.post("/auth/login", json={"username": "nobody", "password": PASSWORD})
    assert on_loop == []


def test_logout_kills_the_token_at_once(client: TestClient) -> None:
    register(client)
    token = login(client)
    assert client.post("/auth/logout", headers=bearer(token)).status_code == 204
    after = client.get("/users/me", headers=bearer(token))
    assert after.status_code == 401
    assert after.headers["www-authenticate"] == "Bearer"


def test_sessions_list_marks_the_current_one(client: TestClient) -> None:
    register(client)
    phone, laptop = login(client), login(client)
    listed = client.get("/auth/sessions", headers=bearer(laptop)).json()
    assert [(s["id"], s["current"]) for s in listed["items"]] == [
        (laptop["session_id"], True),
        (phone["session_id"], False),
    ]
    assert listed["next_cursor"] is None


def test_ending_another_device_session_kills_its_token(client: TestClient) -> None:
    register(client)
    phone, laptop = login(client), login(client)
    assert client.delete(f"/auth/sessions/{phone['session_id']}", headers=bearer(laptop)).status_code == 204
    assert client.get("/users/me", headers=bearer(phone)).status_code == 401
    assert client.get("/users/me", headers=bearer(laptop)).status_code == 200
    remaining = client.get("/auth/sessions", headers=bearer(laptop)).json()["items"]
    assert [s["id"] for s in remaining] == [laptop["session_id"]]


def test_nobody_can_end_anyone_elses_session(client: TestClient) -> None:
    register(client, "tim")
    register(client, "sue")
    tim, sue = login(client, "tim"), login(client, "sue")
    response = client.delete(f"/auth/sessions/{sue['session_id']}", headers=bearer(tim))
    assert response.status_code == 404
    assert client.get("/users/me", headers=bearer(sue)).status_code == 200
    assert client.delete("/auth/sessions/999999", headers=bearer(tim)).status_code == 404


def test_a_staff_token_captures_purchases_in_its_name(client: TestClient, settings: Settings) -> None:
    register(client)
    make_staff(settings, "tim")
    token = login(client)
    response = client.post("/purchases", json=purchase(), headers=bearer(token))
    assert response.status_code == 201
    assert response.json()["captured_by"] == "user:tim"


def _auth(settings: Settings) -> AuthSettings:
    return AuthSettings(
        signing_key=settings.secret_key,
        token_ttl=timedelta(hours=1),
        bcrypt_rounds=4,
        session_retention=timedelta(hours=settings.session_retention_hours),
        dummy_hash=b"",
    )


def test_dead_sessions_are_purged_after_the_retention_period(
    client: TestClient, settings: Settings, database_url: str
) -> None:
    register(client, "tim")
    register(client, "sue")
    old = login(client, "tim")
    client.post("/auth/logout", headers=bearer(old))
    sue = login(client, "sue")
    client.post("/auth/logout", headers=bearer(sue))
    assert table_counts(database_url)["sessions"] == 2

    # Within the retention period a dead session is kept; past it, a login drops that user's.
    login(client, "tim")
    assert table_counts(database_url)["sessions"] == 3

    async def age_and_purge() -> tuple[int, int, int]:
        db = open_database(settings)
        await db.connect()
        try:
            later = replace(settings, session_retention_hours=0)
            # A retention of zero: everything dead before now is past it.
            return await purge_once(db, _auth(later))
        finally:
            await db.disconnect()

    _, purged, _ = asyncio.run(age_and_purge())
    assert purged == 2
    assert table_counts(database_url)["sessions"] == 1  # the live one


def test_a_login_purges_that_users_dead_sessions(
    client: TestClient, settings: Settings, database_url: str
) -> None:
    register(client)
    for _ in range(3):
        client.post("/auth/logout", headers=bearer(login(client)))

    async def login_with_no_retention() -> None:
        db = open_database(settings)
        await db.connect()
        try:
            user = await db.fetch_one(db.sql.find_user_for_login, {"username": "tim"})
            assert user is not None
            auth = replace(_auth(settings), session_retention=timedelta(0))
            attempt = await count_attempt(db, auth.login_throttle, "tim", "127.0.0.1", utc_now())
            await accounts.open_session(db, user["id"], auth, attempt)
        finally:
            await db.disconnect()

    asyncio.run(login_with_no_retention())
    assert table_counts(database_url)["sessions"] == 1


def _read_key(settings: Settings) -> str:
    return signing_key(settings)


def test_without_secret_key_one_key_is_generated_kept_private_and_shared(tmp_path: Path) -> None:
    settings = replace(
        load_settings(environ={}, env_file=None),
        secret_key="",
        database_url=f"sqlite:///{tmp_path / 'db' / 'service.db'}",
    )
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(4) as workers:
        keys = workers.map(_read_key, [settings] * 4)
    assert len(set(keys)) == 1 and len(keys[0]) >= 32
    path = secret_key_path(settings)
    assert path == tmp_path / "db" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing_key(settings) == keys[0]
    assert signing_key(replace(settings, secret_key="k" * 32)) == "k" * 32


@pytest.mark.parametrize("username", ["t\x00im", "tim\u00e9", "  "])
def test_a_login_name_no_account_can_have_is_the_same_401(client: TestClient, username: str) -> None:
    # Found by Schemathesis: a NUL in the username reached PostgreSQL and was a 500.
    register(client)
    response = client.post("/auth/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 401
    assert response.json()["detail"] == "Wrong username or password."
