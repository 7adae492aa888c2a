"""`python -m service seed`: a realistic social data set in seconds, for demos and benchmarks.

Python draws the rows (a fixed random seed, so two runs of the same size look alike); each table
is then filled by one set-based statement per chunk, reading a JSON array. Seeded users are named
`s<run>_<n>` and all share the password SEED_PASSWORD, so a demo can sign in as any of them.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson

from service.accounts import hash_password
from service.bench.sizes import SeedSize
from service.db import Database
from service.queries import Statement
from service.timestamps import to_text, utc_now

SEED_PASSWORD = "seed-password"  # noqa: S105 - the published demo password of seeded users
CHUNK = 20_000


def _chunks(rows: list[dict[str, Any]]) -> Iterator[str]:
    for start in range(0, len(rows), CHUNK):
        yield orjson.dumps(rows[start : start + CHUNK]).decode()


async def _insert(db: Database, statement: Statement, rows: list[dict[str, Any]]) -> list[int]:
    ids: list[int] = []
    for chunk in _chunks(rows):
        ids.extend(row["id"] for row in await db.fetch_all(statement, {"rows": chunk}))
    return ids


async def _insert_all(db: Database, statement: Statement, rows: list[dict[str, Any]]) -> None:
    for chunk in _chunks(rows):
        await db.execute(statement, {"rows": chunk})


def _pairs(
    rng: random.Random, count: int, left: list[int], right: list[int], distinct: bool
) -> set[tuple[int, int]]:
    """Up to `count` distinct pairs (fewer when there are not that many)."""
    most = len(left) * len(right) - (min(len(left), len(right)) if distinct else 0)
    wanted = min(count, most)
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < wanted:
        a, b = rng.choice(left), rng.choice(right)
        if not distinct or a != b:
            pairs.add((a, b))
    return pairs


async def seed(db: Database, size: SeedSize, bcrypt_rounds: int, random_seed: int = 42) -> dict[str, int]:
    """Load a data set of `size`; how many rows of each kind went in."""
    rng = random.Random(random_seed)
    run = secrets.token_hex(3)
    now = utc_now()
    password_hash = (await hash_password(SEED_PASSWORD, bcrypt_rounds)).decode()

    def moment(seconds_ago: int) -> str:
        return to_text(now - timedelta(seconds=seconds_ago, microseconds=rng.randrange(1_000_000)))

    user_rows = [
        {
            "username": f"s{run}_{n}",
            "email": f"s{run}_{n}@example.com",
            "password_hash": password_hash,
            "created_at": moment(size.posts + n),
        }
        for n in range(1, size.users + 1)
    ]
    user_ids = await _insert(db, db.sql.seed_users, user_rows)
    post_rows = [
        {"author_id": rng.choice(user_ids), "content": f"post {n} from the seed", "created_at": moment(n)}
        for n in range(1, size.posts + 1)
    ]
    post_ids = await _insert(db, db.sql.seed_posts, post_rows) if user_ids else []

    def reactions(count: int) -> list[dict[str, Any]]:
        return [
            {"user_id": user_id, "post_id": post_id, "created_at": moment(rng.randrange(size.posts or 1))}
            for user_id, post_id in _pairs(rng, count, user_ids, post_ids, distinct=False)
        ]

    likes, reposts = reactions(size.likes), reactions(size.reposts)
    comment_rows = [
        {
            "post_id": rng.choice(post_ids),
            "author_id": rng.choice(user_ids),
            "body": f"comment {n}",
            "created_at": moment(rng.randrange(size.posts or 1)),
        }
        for n in range(size.comments if post_ids else 0)
    ]
    follow_rows = [
        {"follower_id": a, "followee_id": b, "created_at": moment(rng.randrange(size.posts or 1))}
        for a, b in _pairs(rng, size.follows, user_ids, user_ids, distinct=True)
    ]
    await _insert_all(db, db.sql.seed_likes, likes)
    await _insert_all(db, db.sql.seed_reposts, reposts)
    await _insert_all(db, db.sql.seed_comments, comment_rows)
    await _insert_all(db, db.sql.seed_follows, follow_rows)
    await db.execute(db.sql.analyze, {})
    return {
        "users": len(user_ids),
        "posts": len(post_ids),
        "likes": len(likes),
        "reposts": len(reposts),
        "comments": len(comment_rows),
        "follows": len(follow_rows),
    }
