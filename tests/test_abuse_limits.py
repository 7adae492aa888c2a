"""Abuse limits: login throttling (counts in the database, shared by instances) and per-caller rate
limits (token buckets in each worker)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from service import accounts, rate_limits
from service.app import create_app
from service.config import Settings
from service.db import open_database
from service.housekeeping import purge_once
from service.rate_limits import TokenBuckets
from service.timestamps import utc_now
from tests.conftest import (
    PASSWORD,
    PASSWORDS_SENT,
    assert_no_secret_leaks,
    bearer,
    live_client,
    login,
    make_api_key,
    register,
    table_counts,
)

WRONG = "not the password at all"
PASSWORDS_SENT.add(WRONG)


def counter(metrics: str, name: str, limit: str) -> float:
    found = re.search(rf'^{name}{{limit="{limit}"}} (\S+)$', metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def app_client(settings: Settings, address: str = "203.0.113.7") -> TestClient:
    test_client = TestClient(create_app(settings), raise_server_exceptions=False, client=(address, 50000))
    test_client.event_hooks["response"] = [assert_no_secret_leaks]
    return test_client


WINDOW_SECONDS = 900


@pytest.fixture
def throttled(settings: Settings) -> Settings:
    # Counts live in fixed windows (whole multiples of 900 s since 1970): a test that began a few
    # seconds before one ends would see its count restart mid-way (seen once, at 14:30:00).
    # Such a test starts in the next window instead.
    left_in_window = WINDOW_SECONDS - time.time() % WINDOW_SECONDS
    if left_in_window < 30:
        time.sleep(left_in_window + 0.5)
    return replace(
        settings,
        login_throttle_window_seconds=WINDOW_SECONDS,
        login_failures_per_account=3,
        login_failures_per_address=100,
    )


def sign_in(client: TestClient, username: str, password: str = WRONG) -> httpx.Response:
    return client.post("/auth/login", json={"username": username, "password": password})


@pytest.fixture
def bcrypt_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every password check login asks bcrypt for (the password itself is not kept)."""
    checks: list[str] = []
    check = accounts.password_matches

    async def counted(password: str, password_hash: bytes) -> bool:
        checks.append("checked")
        return await check(password, password_hash)

    monkeypatch.setattr(accounts, "password_matches", counted)
    return checks


def test_past_the_account_limit_a_login_gets_429_before_bcrypt_whether_or_not_the_account_exists(
    throttled: Settings, bcrypt_checks: list[str]
) -> None:
    with app_client(throttled) as client:
        register(client, "tim")
        before = client.get("/metrics").text
        answers = {}
        for username in ("tim", "nobody"):
            assert [sign_in(client, username).status_code for _ in range(3)] == [401, 401, 401]
            checked = len(bcrypt_checks)
            refused = sign_in(client, username)
            assert refused.status_code == 429
            assert len(bcrypt_checks) == checked  # refused before the password was checked
            answers[username] = refused
        # Even the right password: the block is on the attempts, not the password.
        right = sign_in(client, "tim", PASSWORD)
        assert right.status_code == 429 and "access_token" not in right.text
        after = client.get("/metrics").text

    tim, nobody = answers["tim"], answers["nobody"]
    assert tim.headers["content-type"] == "application/problem+json"

    def seconds_apart(answer: Any) -> tuple[dict[str, Any], int]:
        # The two answers are the same but for the request id, and the seconds left in the window,
        # which a clock second may have ticked between (281 against 280 on a busy host).
        body = {key: value for key, value in answer.json().items() if key != "request_id"}
        seconds = int(answer.headers["retry-after"])
        body["detail"] = body["detail"].replace(f"in {seconds} seconds", "in N seconds")
        return body, seconds

    (body, retry_after), (nobody_body, nobody_retry_after) = seconds_apart(tim), seconds_apart(nobody)
    assert body == nobody_body and abs(retry_after - nobody_retry_after) <= 1
    assert (
        body["title"] == "Too Many Requests"
        and body["detail"] == "Too many failed sign-ins; try again in N seconds."
    )
    assert 1 <= retry_after <= 900
    assert (
        counter(after, "login_throttled_total", "account")
        - counter(before, "login_throttled_total", "account")
        == 3
    )


def test_a_right_password_resets_the_account_count(throttled: Settings) -> None:
    with app_client(throttled) as client:
        register(client, "tim")
        assert [sign_in(client, "tim").status_code for _ in range(2)] == [401, 401]
        assert sign_in(client, "tim", PASSWORD).status_code == 200
        # A fresh count: three more failures before the block.
        assert [sign_in(client, "tim").status_code for _ in range(4)] == [401, 401, 401, 429]


def test_the_account_limit_is_per_address_so_nobody_can_lock_the_owner_out(
    throttled: Settings, database_url: str
) -> None:
    with app_client(throttled, "198.51.100.9") as attacker, app_client(throttled, "203.0.113.7") as owner:
        register(owner, "tim")
        assert [sign_in(attacker, "tim").status_code for _ in range(4)] == [401, 401, 401, 429]
        assert sign_in(owner, "tim", PASSWORD).status_code == 200
        assert sign_in(attacker, "tim", PASSWORD).status_code == 429  # still blocked there
    # The attacker's two counts, and the owner's address count (back to 0); no count of the owner's
    # username from the owner's address.
    assert table_counts(database_url)["login_failures"] == 3


def test_one_address_failing_against_many_accounts_meets_the_address_limit(throttled: Settings) -> None:
    throttled = replace(throttled, login_failures_per_address=5)
    with app_client(throttled, "198.51.100.9") as sprayer, app_client(throttled, "203.0.113.7") as other:
        before = sprayer.get("/metrics").text
        answers = [sign_in(sprayer, f"user{n}").status_code for n in range(6)]
        assert answers == [401, 401, 401, 401, 401, 429]
        assert sign_in(sprayer, "user0").status_code == 429  # any username, from that address
        assert sign_in(other, "user0").status_code == 401  # another address is not held up
        after = sprayer.get("/metrics").text
    assert (
        counter(after, "login_throttled_total", "address")
        - counter(before, "login_throttled_total", "address")
        == 2
    )


def test_the_block_ends_with_its_window(throttled: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    with app_client(throttled) as client:
        register(client, "tim")
        assert [sign_in(client, "tim").status_code for _ in range(4)] == [401, 401, 401, 429]
        wait = int(sign_in(client, "tim").headers["retry-after"])
        later = utc_now() + timedelta(seconds=wait + 1)
        monkeypatch.setattr(accounts, "utc_now", lambda: later)
        assert sign_in(client, "tim", PASSWORD).status_code == 200


def test_invalid_requests_are_not_counted(throttled: Settings, database_url: str) -> None:
    with app_client(throttled) as client:
        for _ in range(10):
            assert client.post("/auth/login", json={"username": "tim"}).status_code == 422
        register(client, "tim")
        login(client, "tim")
    assert table_counts(database_url)["login_failures"] == 1  # the address's count of 0, kept


def test_reaching_a_limit_is_logged_once_with_the_username_never_the_password(
    throttled: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="service.abuse"), app_client(throttled) as client:
        register(client, "tim")
        for _ in range(6):
            sign_in(client, "tim")
    lines = [record.getMessage() for record in caplog.records if record.name == "service.abuse"]
    assert lines == [
        "login throttle reached: account limit (3 failed sign-ins in 900 s) for username 'tim'"
        " from 203.0.113.7"
    ]
    abuse = [record for record in caplog.records if record.name == "service.abuse"]
    assert [getattr(record, "limit", None) for record in abuse] == ["login_account"]
    assert not any(
        WRONG in record.getMessage() or PASSWORD in record.getMessage() for record in caplog.records
    )


def test_housekeeping_forgets_the_counts_of_ended_windows(
    throttled: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with app_client(throttled) as client:
        sign_in(client, "tim")
    assert table_counts(database_url)["login_failures"] == 2

    async def purge(at: Any) -> tuple[int, int, int]:
        monkeypatch.setattr("service.housekeeping.utc_now", lambda: at)
        db = open_database(throttled)
        await db.connect()
        try:
            auth = accounts.AuthSettings("k" * 32, timedelta(hours=1), 4, timedelta(hours=24), b"")
            return await purge_once(db, auth)
        finally:
            await db.disconnect()

    assert asyncio.run(purge(utc_now()))[2] == 0  # the window is still open
    assert asyncio.run(purge(utc_now() + timedelta(seconds=901)))[2] == 2
    assert table_counts(database_url)["login_failures"] == 0


def test_two_instances_share_the_counts_and_concurrent_guesses_cannot_slip_past_the_limit(
    live_service: Callable[..., Any],
) -> None:
    limits = {"LOGIN_FAILURES_PER_ACCOUNT": "4", "LOGIN_FAILURES_PER_ADDRESS": "1000"}

    async def scenario(first: str, second: str) -> None:
        async with live_client(first, timeout=30) as a, live_client(second, timeout=30) as b:
            assert (
                await a.post(
                    "/auth/register",
                    json={"username": "tim", "email": "tim@example.com", "password": PASSWORD},
                )
            ).status_code == 201

            async def guess(api: httpx.AsyncClient, address: str, password: str = WRONG) -> int:
                answer = await api.post(
                    "/auth/login",
                    json={"username": "tim", "password": password},
                    headers={"X-Forwarded-For": address},
                )
                return answer.status_code

            # One after another, alternating instances: the fifth failure is refused by either.
            assert [await guess(api, "198.51.100.1") for api in (a, b, a, b)] == [401] * 4
            assert [await guess(a, "198.51.100.1"), await guess(b, "198.51.100.1")] == [429, 429]

            # Twenty at once from another address, ten through each instance: exactly four are
            # checked (the limit), every other one refused - none slipped in between count and check.
            statuses = await asyncio.gather(*(guess(api, "198.51.100.2") for api in (a, b) * 10))
            assert sorted(statuses) == [401] * 4 + [429] * 16

            # The owner, elsewhere, signs in as usual.
            assert await guess(b, "203.0.113.50", PASSWORD) == 200
            metrics = (await a.get("/metrics")).text + (await b.get("/metrics")).text
            assert counter(metrics, "login_throttled_total", "account") >= 1

    with live_service(**limits) as first, live_service(**limits) as second:
        asyncio.run(scenario(first, second))


# --- per-caller rate limits ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(rate_limits, "monotonic", fake)
    return fake


@pytest.fixture
def limited(settings: Settings, clock: Clock) -> Iterator[TestClient]:
    with app_client(replace(settings, rate_limit_api_key=3, rate_limit_user=2)) as client:
        yield client


def test_an_api_key_past_its_rate_limit_gets_429_with_the_ietf_headers(
    limited: TestClient, settings: Settings, clock: Clock
) -> None:
    key = {"X-API-Key": make_api_key(settings, "busy")}
    other = {"X-API-Key": make_api_key(settings, "calm")}
    before = limited.get("/metrics").text
    answers = [limited.get("/purchases", headers=key) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert {answer.headers["ratelimit-policy"] for answer in answers} == {'"api_key";q=3;w=1'}
    assert [answer.headers["ratelimit"] for answer in answers] == [
        '"api_key";r=2;t=1',
        '"api_key";r=1;t=1',
        '"api_key";r=0;t=1',
    ]

    refused = limited.get("/purchases", headers=key)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit-policy"] == '"api_key";q=3;w=1'
    assert refused.headers["ratelimit"] == '"api_key";r=0;t=1'
    assert refused.json()["detail"] == "Too many requests from this API key: the limit is 3 a second."
    # The write routes too, and nothing is written.
    assert limited.post("/purchases", json={}, headers=key).status_code == 429
    assert limited.get("/purchases", headers=other).status_code == 200  # its own bucket

    clock.now += 1 / 3  # one request's worth comes back
    assert limited.get("/purchases", headers=key).status_code == 200
    assert limited.get("/purchases", headers=key).status_code == 429
    after = limited.get("/metrics").text
    assert (
        counter(after, "rate_limited_total", "api_key") - counter(before, "rate_limited_total", "api_key")
        == 3
    )


def test_a_key_over_its_limit_is_refused_before_it_is_looked_up(limited: TestClient) -> None:
    made_up = {"X-API-Key": "pfs_not-a-key-anyone-was-given"}
    assert [limited.get("/purchases", headers=made_up).status_code for _ in range(4)] == [401, 401, 401, 429]


def test_a_user_past_the_user_limit_gets_429_and_other_users_do_not(
    limited: TestClient, clock: Clock
) -> None:
    register(limited, "tim")
    register(limited, "sue")
    tim, sue = bearer(login(limited, "tim")), bearer(login(limited, "sue"))
    assert [limited.get("/feed", headers=tim).status_code for _ in range(3)] == [200, 200, 429]
    refused = limited.get("/users/me", headers=tim)
    assert refused.status_code == 429 and refused.headers["ratelimit-policy"] == '"user";q=2;w=1'
    assert refused.json()["detail"] == "Too many requests from this user: the limit is 2 a second."
    assert limited.get("/feed", headers=sue).status_code == 200
    clock.now += 1.0
    assert limited.get("/feed", headers=tim).status_code == 200


def test_rate_limits_are_off_unless_set(client: TestClient, settings: Settings) -> None:
    key = {"X-API-Key": make_api_key(settings)}
    answers = [client.get("/purchases", headers=key) for _ in range(30)]
    assert {answer.status_code for answer in answers} == {200}
    assert not any("ratelimit" in answer.headers for answer in answers)


def test_a_limited_caller_is_logged_once_until_its_bucket_is_full_again(
    limited: TestClient, settings: Settings, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    key = make_api_key(settings, "busy")
    with caplog.at_level(logging.WARNING, logger="service.abuse"):
        for _ in range(10):  # three allowed, seven refused: one line
            limited.get("/purchases", headers={"X-API-Key": key})
        clock.now += 0.5  # not full again yet: still the same episode
        for _ in range(5):
            limited.get("/purchases", headers={"X-API-Key": key})
        clock.now += 2.0  # full again: a new episode
        for _ in range(5):
            limited.get("/purchases", headers={"X-API-Key": key})
    lines = [record.getMessage() for record in caplog.records if record.name == "service.abuse"]
    expected = f"rate limit reached: api_key limit (3 requests a second per worker) for API key {key[:10]}..."
    assert lines == [expected, expected]
    assert key not in "".join(lines)


def test_buckets_stay_bounded_under_a_flood_of_made_up_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rate_limits, "MAX_CALLERS", 100)
    now = [0.0]
    buckets = TokenBuckets("api_key", 2, clock=lambda: now[0])
    state: dict[str, Any] = {}
    buckets.take(state, "steady", "steady")
    buckets.take(state, "steady", "steady")  # empty: it must not be forgotten while others come and go
    for caller in range(99):
        buckets.take(state, caller, "made up")
    now[0] += 0.1
    for caller in range(100, 1000):
        buckets.take(state, caller, "made up")
        assert len(buckets._buckets) <= 100
    # The flood started everyone afresh at worst: never a refusal that was not earned.
    buckets.take(state, "steady", "steady")
    buckets.take(state, "steady", "steady")


def test_the_openapi_document_lists_the_429s(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if operation.get("security") or (path, method) == ("/auth/login", "post"):
                answer = operation["responses"].get("429")
                assert answer is not None, f"{method} {path}"
                assert {"Retry-After", "RateLimit-Policy", "RateLimit"} <= set(answer["headers"])
            else:
                assert "429" not in operation["responses"], f"{method} {path}"
