"""Tokens get in only with a good HS256 signature, a future exp, and a live session of their own user."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import jwt
import pytest
from starlette.testclient import TestClient

from service.timestamps import utc_now
from tests.conftest import TEST_SECRET_KEY, bearer, login, register


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


@pytest.fixture
def signed_in(client: TestClient) -> dict[str, Any]:
    register(client)
    return login(client)


def is_let_in(client: TestClient, token: str) -> bool:
    response = client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code in (200, 401), response.text
    if response.status_code == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["content-type"] == "application/problem+json"
    return response.status_code == 200


def test_a_good_token_is_let_in(client: TestClient, signed_in: dict[str, Any]) -> None:
    assert is_let_in(client, signed_in["access_token"])
    assert set(claims_of(signed_in["access_token"])) == {"sub", "sid", "iat", "exp"}


FORGERIES: list[tuple[str, Callable[[str], str]]] = [
    (
        "tampered payload",
        lambda token: ".".join(
            [
                token.split(".")[0],
                b64({**claims_of(token), "sub": str(int(claims_of(token)["sub"]) + 1)}),
                token.split(".")[2],
            ]
        ),
    ),
    ("bad signature", lambda token: jwt.encode(claims_of(token), "another-key-entirely-0123456789abcdef")),
    ("alg none", lambda token: f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims_of(token))}."),
    (
        "HS512 with the real key",
        lambda token: jwt.encode(claims_of(token), TEST_SECRET_KEY, algorithm="HS512"),
    ),
    (
        "RS256 header",
        lambda token: f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims_of(token))}.{token.split('.')[2]}",
    ),
    ("truncated", lambda token: token[:-5]),
    ("not a jwt", lambda token: "definitely-not-a-token"),
    (
        "expired",
        lambda token: jwt.encode(
            {
                **claims_of(token),
                "iat": utc_now() - timedelta(hours=2),
                "exp": utc_now() - timedelta(seconds=1),
            },
            TEST_SECRET_KEY,
        ),
    ),
    (
        "missing sid",
        lambda token: jwt.encode({k: v for k, v in claims_of(token).items() if k != "sid"}, TEST_SECRET_KEY),
    ),
    (
        "sid as text",
        lambda token: jwt.encode({**claims_of(token), "sid": str(claims_of(token)["sid"])}, TEST_SECRET_KEY),
    ),
]


@pytest.mark.parametrize("forge", [f for _, f in FORGERIES], ids=[name for name, _ in FORGERIES])
def test_forged_or_expired_tokens_are_401(
    client: TestClient, signed_in: dict[str, Any], forge: Callable[[str], str]
) -> None:
    assert not is_let_in(client, forge(signed_in["access_token"]))
    assert is_let_in(client, signed_in["access_token"])  # the real one still works


def test_a_token_of_a_revoked_session_is_401(client: TestClient, signed_in: dict[str, Any]) -> None:
    client.post("/auth/logout", headers=bearer(signed_in))
    assert not is_let_in(client, signed_in["access_token"])


def test_a_validly_signed_token_naming_another_users_session_is_401(client: TestClient) -> None:
    register(client, "tim")
    register(client, "sue")
    tim, sue = login(client, "tim"), login(client, "sue")
    # Signed with the real key (as if it leaked), tim's id with sue's live session: still refused.
    crossed = jwt.encode({**claims_of(tim["access_token"]), "sid": sue["session_id"]}, TEST_SECRET_KEY)
    assert not is_let_in(client, crossed)


def test_a_token_whose_session_expired_in_the_database_is_401(
    client: TestClient, signed_in: dict[str, Any], database_url: str
) -> None:
    import psycopg

    past = utc_now() - timedelta(seconds=1)
    if database_url.startswith("sqlite"):
        import sqlite3

        from service.timestamps import to_text

        with sqlite3.connect(database_url.split(":///", 1)[1]) as conn:
            conn.execute("UPDATE sessions SET expires_at = ?", (to_text(past),))
    else:
        with psycopg.connect(database_url) as conn:
            conn.execute("UPDATE sessions SET expires_at = %s", (past,))
    assert not is_let_in(client, signed_in["access_token"])


def test_a_token_is_dead_once_another_device_ends_its_session(client: TestClient) -> None:
    register(client)
    stolen_laptop, phone = login(client), login(client)
    for session in client.get("/auth/sessions", headers=bearer(phone)).json()["items"]:
        if not session["current"]:
            assert client.delete(f"/auth/sessions/{session['id']}", headers=bearer(phone)).status_code == 204
    assert not is_let_in(client, stolen_laptop["access_token"])
    assert is_let_in(client, phone["access_token"])


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Bearer  ", "Basic dGltOnB3", "Token abc", "Bearer a b", "bearer", "Bearer\tx"],
)
def test_a_malformed_authorization_header_is_401(
    client: TestClient, signed_in: dict[str, Any], header: str
) -> None:
    response = client.get("/users/me", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_the_scheme_name_is_case_insensitive(client: TestClient, signed_in: dict[str, Any]) -> None:
    response = client.get("/users/me", headers={"Authorization": f"bearer {signed_in['access_token']}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/users/me"), ("GET", "/auth/sessions"), ("POST", "/auth/logout")]
)
def test_account_routes_refuse_api_keys_and_anonymous_callers(
    client: TestClient, api_key: str, method: str, path: str
) -> None:
    assert client.request(method, path).status_code == 401
    keyed = client.request(method, path, headers={"X-API-Key": api_key})
    assert keyed.status_code == 403  # live, but a key is not a person
    assert (
        keyed.json()["detail"]
        == "This route acts as a person: it takes a user's access token, not an API key."
    )
    assert client.request(method, path, headers={"X-API-Key": "pfs_never-issued"}).status_code == 401
