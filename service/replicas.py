"""Read replicas: which statements may read a moment-old copy, which replica may serve one, and
the consistency token that lets a caller read its own writes on any instance.

Every write response carries `X-Consistency-Token`: the primary's WAL insert position taken after
the commit (not `pg_current_wal_lsn()`, the *write* position, which after an asynchronous commit
can lie before the commit record). A read that sends it back is served by a replica known to have
replayed at least that far, or else by the primary. Each worker keeps each replica's replay
position and lag from a monitor that polls them; nothing about callers is kept anywhere.
"""

from __future__ import annotations

import itertools
import logging
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("service.replicas")

# The one place that decides: reads that may be a moment old. Everything else - writes, and every
# check that must be current (a session, an API key, an idempotency claim) - stays on the primary.
REPLICA_READS = frozenset(
    {
        # social reads
        "get_post",
        "list_posts",
        "list_posts_of_user",
        "feed",
        "list_comments",
        "user_profile",
        "list_followers",
        "list_following",
        # purchases, customers and reports
        "get_purchase",
        "list_purchases",
        "list_purchases_of_customer",
        "list_purchases_of_item",
        "list_purchases_of_customer_and_item",
        "get_customer",
        "list_customers",
        "customer_summary",
        "sales_by_day",
        "sales_by_item",
        "sales_by_customer",
    }
)

TOKEN_HEADER = b"x-consistency-token"
_LSN = re.compile(rb"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
# A token that cannot be read asks for more than any replica can promise: the primary serves it.
UNREADABLE = 1 << 64

# The position the current request must read at or after (its token), if it sent one.
required_position: ContextVar[int | None] = ContextVar("required_position", default=None)


def parse_token(raw: bytes) -> int:
    match = _LSN.match(raw.strip())
    if match is None:
        return UNREADABLE
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_token(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


@dataclass
class Replica:
    name: str
    backend: Any  # a PostgresBackend with its own pool
    position: int = 0  # replay position last seen
    lag_seconds: float | None = None  # None: not reachable at the last look
    usable: bool = False


@dataclass
class ReplicaSet:
    replicas: list[Replica]
    max_lag_seconds: float
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def choose(self, required: int | None) -> Replica | None:
        """A usable replica that has replayed at least `required`, taking turns; None: the primary."""
        candidates = [
            replica
            for replica in self.replicas
            if replica.usable and (required is None or replica.position >= required)
        ]
        if not candidates:
            return None
        return candidates[next(self._turn) % len(candidates)]

    def set_aside(self, replica: Replica, reason: BaseException) -> None:
        """It did not answer: skip it until a look finds it answering again."""
        if replica.usable or replica.lag_seconds is not None:
            log.warning("replica %s set aside: %s", replica.name, reason.__class__.__name__)
        replica.usable, replica.lag_seconds = False, None

    def record(self, replica: Replica, row: Any, primary_position: int) -> None:
        """What a look found: its replay position and, while it is behind, its lag."""
        replica.position = parse_token(str(row["position"] or "0/0").encode())
        behind = replica.position < primary_position
        replica.lag_seconds = float(row["lag_seconds"] or 0.0) if behind else 0.0
        usable = replica.lag_seconds <= self.max_lag_seconds
        if usable != replica.usable:
            state = "in use" if usable else "skipped"
            log.info("replica %s %s (lag %.3f s)", replica.name, state, replica.lag_seconds)
        replica.usable = usable
