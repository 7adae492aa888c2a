"""How much `python -m service seed` loads: the default is the shape ../shared/bench/limit_app.py
seeds; LARGE is the shape of a service that has run for a year (issue 26's data set)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

KINDS = ("users", "posts", "likes", "reposts", "comments", "follows", "customers", "purchases")


@dataclass(frozen=True)
class SeedSize:
    users: int = 1000
    posts: int = 10_000
    likes: int = 50_000
    reposts: int = 10_000
    comments: int = 20_000
    follows: int = 10_000
    customers: int = 0
    purchases: int = 0


# 2M of the likes on the 20 newest posts (100,000 each), one user following 5,000, purchases over
# 365 days with one customer holding 20,000 of them.
LARGE = SeedSize(
    users=100_000,
    posts=1_000_000,
    likes=3_000_000,
    reposts=300_000,
    comments=1_000_000,
    follows=500_000,
    customers=1_000_000,
    purchases=5_000_000,
)
SIZES = {"small": SeedSize(), "large": LARGE}


def chosen_size(options: Any) -> SeedSize:
    """The --data preset with any --users N ... given on top of it."""
    given = {kind: getattr(options, kind) for kind in KINDS if getattr(options, kind) is not None}
    return replace(SIZES[options.data], **given)
