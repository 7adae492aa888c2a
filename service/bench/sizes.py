"""The default size of `python -m service seed`: the shape ../shared/bench/limit_app.py seeds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SeedSize:
    users: int = 1000
    posts: int = 10_000
    likes: int = 50_000
    reposts: int = 10_000
    comments: int = 20_000
    follows: int = 10_000
