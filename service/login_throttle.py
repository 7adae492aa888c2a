"""Login throttling: failed sign-ins counted in the database, per account and per client address.

Each attempt is counted before bcrypt runs, in one upsert that also says whether a limit is reached
(a count at its limit stays put and returns no row), so every instance shares the counts and
attempts arriving together cannot all slip under a limit. A right password takes its attempt back
and forgets that username's failures from that address. Windows are fixed: a block ends with its
window, never later, and no account is ever locked outright - the account limit counts one
username *from one address*, so nobody elsewhere can lock its owner out.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request

from service.config import LoginThrottle
from service.db import Database
from service.errors import Problem
from service.metrics import observe_login_throttled
from service.queries import Statement
from service.validation import USERNAME

log = logging.getLogger("service.abuse")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class LoginAttempt:
    """A counted attempt: what `forgive` needs to take it back when the password is right."""

    account: str
    address: str
    window_ends_at: datetime


class LoginThrottled(Problem):
    def __init__(self, retry_after: int) -> None:
        # One answer whichever limit it is, and whether or not the account exists.
        super().__init__(
            429,
            f"Too many failed sign-ins; try again in {retry_after} seconds.",
            headers={"Retry-After": str(retry_after)},
        )


def window_end(now: datetime, window_seconds: int) -> datetime:
    """The end of the fixed window `now` falls in (windows start at whole multiples since 1970)."""
    elapsed = (now - _EPOCH) // timedelta(seconds=window_seconds)
    return _EPOCH + timedelta(seconds=(elapsed + 1) * window_seconds)


async def count_attempt(
    db: Database, throttle: LoginThrottle, username: str, address: str, now: datetime
) -> LoginAttempt:
    """Count this attempt, or raise LoginThrottled (429) when a limit has been reached already."""
    # A name no account can have (a NUL, which PostgreSQL refuses in text) is counted as "?".
    account = username if USERNAME.fullmatch(username) else "?"
    # A username is at most 32 characters, an address at most 45 (IPv6 text).
    attempt = LoginAttempt(
        f"{account} {address}"[:120], address[:120], window_end(now, throttle.window_seconds)
    )
    rows = await db.fetch_all(
        db.sql.count_login_attempt,
        {
            "account": attempt.account,
            "address": attempt.address,
            "window_ends_at": attempt.window_ends_at,
            "per_account": throttle.per_account,
            "per_address": throttle.per_address,
        },
    )
    counted = {row["limit_name"]: row["failures"] for row in rows}
    limits = {"account": throttle.per_account, "address": throttle.per_address}
    for name, limit in limits.items():
        if name not in counted:
            observe_login_throttled(name)
            raise LoginThrottled(max(1, math.ceil((attempt.window_ends_at - now).total_seconds())))
        if counted[name] == limit:  # once per window and subject, across every instance
            who = f"username {account!r} from {address}" if name == "account" else f"address {address}"
            log.warning(
                "login throttle reached: %s limit (%d failed sign-ins in %d s) for %s",
                name,
                limit,
                throttle.window_seconds,
                who,
                extra={"limit": f"login_{name}"},
            )
    return attempt


def forgive(db: Database, attempt: LoginAttempt) -> list[tuple[Statement, dict[str, Any]]]:
    """The statements that take a right password's attempt back (run with the new session's)."""
    return [
        (db.sql.forget_account_failures, {"account": attempt.account}),
        (
            db.sql.forgive_login_attempt,
            {"address": attempt.address, "window_ends_at": attempt.window_ends_at},
        ),
    ]


async def purge_ended_windows(db: Database, now: datetime) -> int:
    return int(await db.execute(db.sql.purge_ended_login_windows, {"now": now}))


def client_address(request: Request) -> str:
    """The caller's address: the peer, or X-Forwarded-For's when the peer is a proxy uvicorn trusts
    (FORWARDED_ALLOW_IPS, by default 127.0.0.1)."""
    client = request.client
    return client.host if client is not None else "unknown"
