"""Per-caller rate limits: a token bucket for each API key and each user, in each worker's memory.

No database round trip: an API key over its limit is refused before it is looked up, a user's
token after its signature is checked and before its session is. Each bucket holds a second's worth
of requests and refills at the limit's rate, so a caller may send a burst of that size and then
that many a second, for as long as it likes. Every worker keeps its own buckets: across W workers
(and N instances) a caller gets up to W x N times the limit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from time import monotonic
from typing import Any

from starlette.requests import Request

from service.config import Settings
from service.errors import Problem
from service.metrics import observe_rate_limited

log = logging.getLogger("service.abuse")

# Past this many callers in one worker's memory, the buckets that have filled up again are
# forgotten (a full bucket is what a new caller gets anyway); if that is not enough - a flood of
# made-up keys - every bucket starts afresh. Memory stays bounded; nobody is refused wrongly.
MAX_CALLERS = 10_000

_WHO = {"api_key": "API key", "user": "user"}


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    # Refused since the bucket was last full: the warning is logged once for the whole episode.
    limited: bool = False


class TokenBuckets:
    def __init__(self, name: str, per_second: int, clock: Callable[[], float] | None = None) -> None:
        self.name = name
        self.per_second = per_second
        self._rate = float(per_second)
        self._clock = clock or monotonic
        self._buckets: dict[Hashable, _Bucket] = {}
        # IETF draft-ietf-httpapi-ratelimit-headers: the quota, over a window of one second.
        self.policy = f'"{name}";q={per_second};w=1'
        self._policy_header = (b"ratelimit-policy", self.policy.encode())

    def take(self, state: dict[str, Any], caller: Hashable, label: str) -> None:
        """One request from `caller`; raises RateLimited (429) when its bucket is empty.

        Allowed, the request's state carries the RateLimit headers its response will have.
        """
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= MAX_CALLERS:
                self._forget_full_buckets(now)
            bucket = self._buckets[caller] = _Bucket(self._rate, now)
        tokens = min(self._rate, bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        if tokens >= 1.0:
            if tokens >= self._rate:
                bucket.limited = False
            bucket.tokens = tokens - 1.0
            state["rate_limit"] = (
                self._policy_header,
                (b"ratelimit", self.rate_limit_field(bucket.tokens).encode()),
            )
            return
        bucket.tokens = tokens
        observe_rate_limited(self.name)
        if not bucket.limited:
            bucket.limited = True
            log.warning(
                "rate limit reached: %s limit (%d requests a second per worker) for %s",
                self.name,
                self.per_second,
                label,
                extra={"limit": f"rate_{self.name}"},
            )
        raise RateLimited(self, tokens)

    def rate_limit_field(self, tokens: float) -> str:
        """The RateLimit field: requests left now, and seconds until the bucket is full again."""
        return f'"{self.name}";r={int(tokens)};t={math.ceil((self._rate - tokens) / self._rate)}'

    def _forget_full_buckets(self, now: float) -> None:
        rate = self._rate
        full = [caller for caller, b in self._buckets.items() if b.tokens + (now - b.at) * rate >= rate]
        for caller in full:
            del self._buckets[caller]
        if len(self._buckets) >= MAX_CALLERS:
            self._buckets.clear()


class RateLimited(Problem):
    def __init__(self, buckets: TokenBuckets, tokens: float) -> None:
        wait = max(1, math.ceil((1.0 - tokens) / buckets.per_second))
        super().__init__(
            429,
            f"Too many requests from this {_WHO[buckets.name]}: the limit is {buckets.per_second} a second.",
            headers={
                "Retry-After": str(wait),
                "RateLimit-Policy": buckets.policy,
                "RateLimit": buckets.rate_limit_field(tokens),
            },
        )


def rate_limits_from(settings: Settings) -> dict[str, TokenBuckets] | None:
    """The buckets of each limit that is on (RATE_LIMIT_API_KEY, RATE_LIMIT_USER); None when none is."""
    limits = {
        name: TokenBuckets(name, per_second)
        for name, per_second in (("api_key", settings.rate_limit_api_key), ("user", settings.rate_limit_user))
        if per_second > 0
    }
    return limits or None


def limit_rate(request: Request, kind: str, caller: Hashable, label: str) -> None:
    """Count one request against `caller`'s bucket of limit `kind`, if that limit is on."""
    state = request.scope["state"]
    limits: dict[str, TokenBuckets] | None = state.get("rate_limits")
    if limits is not None and (buckets := limits.get(kind)) is not None:
        buckets.take(state, caller, label)
