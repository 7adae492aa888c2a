"""Kept counts (post_counts, user_counts): always equal to the rows they count.

Every check here compares the kept counts with the same counts taken from the rows, and what the
API shows with both: after random mixes of writes, concurrent likes of one post, deletes that
cascade, and (test_migrations) the fill of a database that had rows before the counts existed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.conftest import PASSWORD, POOLED, bearer, live_client, login, register, run_sql, table_connection

# A post's counts and a user's, from their rows: what the kept counts must always equal.
COUNTED_POSTS = """
SELECT p.id,
       (SELECT count(*) FROM likes l WHERE l.post_id = p.id),
       (SELECT count(*) FROM reposts r WHERE r.post_id = p.id),
       (SELECT count(*) FROM comments c WHERE c.post_id = p.id)
FROM posts p
"""
COUNTED_USERS = """
SELECT u.id,
       (SELECT count(*) FROM posts p WHERE p.author_id = u.id),
       (SELECT count(*) FROM follows f WHERE f.followee_id = u.id),
       (SELECT count(*) FROM follows f WHERE f.follower_id = u.id)
FROM users u
"""
KEPT_POSTS = """
SELECT post_id, sum(like_count), sum(repost_count), sum(comment_count), min(like_count),
       min(repost_count), min(comment_count)
FROM post_counts GROUP BY post_id
"""
KEPT_USERS = """
SELECT user_id, sum(post_count), sum(follower_count), sum(following_count), min(post_count),
       min(follower_count), min(following_count)
FROM user_counts GROUP BY user_id
"""


def _rows(conn: Any, query: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in conn.execute(query).fetchall()]


def count_errors(database_url: str) -> list[str]:
    """Where the kept counts differ from the rows (empty when every count is exact)."""
    errors = []
    with table_connection(database_url) as conn:
        for what, counted_query, kept_query in (
            ("post", COUNTED_POSTS, KEPT_POSTS),
            ("user", COUNTED_USERS, KEPT_USERS),
        ):
            counted = {row[0]: tuple(row[1:]) for row in _rows(conn, counted_query) if any(row[1:])}
            kept_rows = _rows(conn, kept_query)
            kept = {row[0]: tuple(int(n) for n in row[1:4]) for row in kept_rows if any(row[1:4])}
            errors += [
                f"{what} {key}: kept {kept.get(key, (0, 0, 0))}, counted {counted.get(key, (0, 0, 0))}"
                for key in sorted(set(counted) | set(kept))
                if counted.get(key, (0, 0, 0)) != kept.get(key, (0, 0, 0))
            ]
            errors += [
                f"{what} {row[0]}: a shard below zero {row[4:]}" for row in kept_rows if min(row[4:]) < 0
            ]
    return errors


def kept_rows_of(database_url: str, table: str, column: str, key: int) -> int:
    with table_connection(database_url) as conn:
        placeholder = "?" if database_url.startswith("sqlite") else "%s"
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = {placeholder}", (key,)).fetchone()
        return int(row[0])


def user(client: TestClient, name: str) -> dict[str, str]:
    register(client, name)
    return bearer(login(client, name))


def shown_post_counts(client: TestClient) -> dict[int, tuple[int, int, int]]:
    """Every post's counts as GET /posts shows them, page after page."""
    posts: dict[int, tuple[int, int, int]] = {}
    cursor = None
    while True:
        page = client.get("/posts", params={"limit": 100, **({"cursor": cursor} if cursor else {})}).json()
        posts |= {p["id"]: (p["like_count"], p["repost_count"], p["comment_count"]) for p in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return posts


NAMES = ("ann", "bob", "cat", "dan")

# One write, as (what, who, whom): `whom` picks a post (by its place among the live ones) or a user.
WRITES = st.tuples(
    st.sampled_from(
        ["post", "delete", "like", "unlike", "repost", "unrepost", "comment", "follow", "unfollow"]
    ),
    st.integers(0, len(NAMES) - 1),
    st.integers(0, 7),
)


def test_random_mixes_of_writes_keep_every_count_equal_to_its_rows(
    client: TestClient, database_url: str
) -> None:
    people = {name: user(client, name) for name in NAMES}
    mine: dict[int, str] = {}  # live post id -> its author

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(WRITES, min_size=1, max_size=25))
    def mix(writes: list[tuple[str, int, int]]) -> None:
        for what, who, whom in writes:
            name = NAMES[who]
            headers = people[name]
            post_ids = sorted(mine)
            target = post_ids[whom % len(post_ids)] if post_ids else 0
            if what == "post" or (not post_ids and what not in ("follow", "unfollow")):
                created = client.post("/posts", json={"content": "x"}, headers=headers)
                assert created.status_code == 201
                mine[created.json()["id"]] = name
            elif what == "delete":
                own = [post_id for post_id, author in mine.items() if author == name]
                if own:
                    assert client.delete(f"/posts/{own[whom % len(own)]}", headers=headers).status_code == 204
                    del mine[own[whom % len(own)]]
            elif what in ("like", "unlike", "repost", "unrepost"):
                method = "DELETE" if what.startswith("un") else "PUT"
                path = f"/posts/{target}/{what.removeprefix('un')}"
                assert client.request(method, path, headers=headers).status_code == 204
            elif what == "comment":
                response = client.post(f"/posts/{target}/comments", json={"body": "c"}, headers=headers)
                assert response.status_code == 201
            else:
                other = NAMES[whom % len(NAMES)]
                method = "PUT" if what == "follow" else "DELETE"
                status = client.request(method, f"/users/{other}/follow", headers=headers).status_code
                assert status == (422 if other == name else 204)
        assert count_errors(database_url) == []

    mix()

    # And what the API shows is what the rows say.
    with table_connection(database_url) as conn:
        counted_posts = {row[0]: tuple(row[1:]) for row in _rows(conn, COUNTED_POSTS)}
        counted_users = {row[0]: tuple(row[1:]) for row in _rows(conn, COUNTED_USERS)}
    assert shown_post_counts(client) == counted_posts
    for name in NAMES:
        profile = client.get(f"/users/{name}").json()
        shown = (profile["post_count"], profile["follower_count"], profile["following_count"])
        assert shown == counted_users[profile["id"]], name


def test_deleting_a_comment_a_post_or_a_user_leaves_no_count_behind(
    client: TestClient, database_url: str
) -> None:
    tim, sue, ann = user(client, "tim"), user(client, "sue"), user(client, "ann")
    first = client.post("/posts", json={"content": "one"}, headers=tim).json()["id"]
    second = client.post("/posts", json={"content": "two"}, headers=sue).json()["id"]
    for who in (sue, ann):
        client.put(f"/posts/{first}/like", headers=who)
        client.put(f"/posts/{first}/repost", headers=who)
        client.put("/users/tim/follow", headers=who)
        client.post(f"/posts/{first}/comments", json={"body": "hi"}, headers=who)
    client.put(f"/posts/{second}/like", headers=tim)
    client.put("/users/sue/follow", headers=tim)
    assert client.get(f"/posts/{first}").json()["comment_count"] == 2

    # A comment deleted (no route does; an operator might), then a whole user: sue's likes,
    # reposts, comments, follows and posts all go by cascade, and every count they were in drops.
    run_sql(
        database_url, f"DELETE FROM comments WHERE post_id = {first} AND id = (SELECT min(id) FROM comments)"
    )
    assert client.get(f"/posts/{first}").json()["comment_count"] == 1
    run_sql(database_url, "DELETE FROM users WHERE username = 'sue'")
    shown = client.get(f"/posts/{first}").json()
    assert (shown["like_count"], shown["repost_count"], shown["comment_count"]) == (1, 1, 1)
    profile = client.get("/users/tim").json()
    assert (profile["post_count"], profile["follower_count"], profile["following_count"]) == (1, 1, 0)
    assert kept_rows_of(database_url, "user_counts", "user_id", 2) == 0
    assert kept_rows_of(database_url, "post_counts", "post_id", second) == 0

    # A post deleted through the API takes its counts with it, and its author's post count drops.
    assert client.delete(f"/posts/{first}", headers=tim).status_code == 204
    assert kept_rows_of(database_url, "post_counts", "post_id", first) == 0
    assert client.get("/users/tim").json()["post_count"] == 0
    assert count_errors(database_url) == []


def test_a_count_changed_by_hand_is_caught(client: TestClient, database_url: str) -> None:
    """The checks above can fail: one like too many in one shard is found, and so is a negative shard."""
    tim, sue = user(client, "tim"), user(client, "sue")
    post_id = client.post("/posts", json={"content": "x"}, headers=tim).json()["id"]
    client.put(f"/posts/{post_id}/like", headers=sue)
    assert count_errors(database_url) == []

    run_sql(database_url, f"UPDATE post_counts SET like_count = like_count + 1 WHERE post_id = {post_id}")
    assert count_errors(database_url) == [f"post {post_id}: kept (2, 0, 0), counted (1, 0, 0)"]
    assert client.get(f"/posts/{post_id}").json()["like_count"] == 2  # the API reads what is kept
    run_sql(
        database_url,
        f"UPDATE post_counts SET like_count = like_count - 1 WHERE post_id = {post_id}",
        f"INSERT INTO post_counts (post_id, shard, like_count) VALUES ({post_id}, 99, -1)",
        f"UPDATE post_counts SET like_count = like_count + 1 WHERE post_id = {post_id} AND shard <> 99",
    )
    assert count_errors(database_url) == [f"post {post_id}: a shard below zero (-1, 0, 0)"]


def test_concurrent_likes_and_unlikes_of_one_post_end_equal_to_the_rows(
    live_service: Any, database_url: str
) -> None:
    """32 people liking and unliking one post at once, each many times: the count is the likes left."""
    people = 32
    with live_service() as base:

        async def scenario() -> list[int]:
            async with live_client(base, timeout=30) as api:

                async def sign_up(n: int) -> dict[str, str]:
                    name = f"fan{n}"
                    account = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
                    assert (await api.post("/auth/register", json=account)).status_code == 201
                    token = await api.post("/auth/login", json={"username": name, "password": PASSWORD})
                    return bearer(token.json())

                fans = await asyncio.gather(*(sign_up(n) for n in range(people)))
                post_id = (await api.post("/posts", json={"content": "hot"}, headers=fans[0])).json()["id"]

                async def react(n: int) -> list[int]:
                    # Fan n likes and unlikes in turn, ending on a like when n is even.
                    statuses = []
                    for step in range(6 + n % 2):
                        method = "PUT" if step % 2 == 0 else "DELETE"
                        response = await api.request(method, f"/posts/{post_id}/like", headers=fans[n])
                        statuses.append(response.status_code)
                    return statuses

                every = await asyncio.gather(*(react(n) for n in range(people)))
                shown = (await api.get(f"/posts/{post_id}")).json()["like_count"]
                return [shown, *(status for statuses in every for status in statuses)]

        shown, *statuses = asyncio.run(scenario())

    assert set(statuses) == {204}
    assert shown == people // 2  # the odd fans ended on an unlike
    assert count_errors(database_url) == []


def test_the_drift_check_names_a_missing_counting_trigger(client: TestClient, database_url: str) -> None:
    from sqlalchemy import create_engine

    from service.migrations.schema import differences, sync_url
    from service.tables import create_triggers

    sqlite = database_url.startswith("sqlite")
    run_sql(database_url, "DROP TRIGGER likes_counted" + ("" if sqlite else " ON likes"))
    engine = create_engine(sync_url(POOLED.get(database_url, database_url)))
    try:
        with engine.connect() as conn:
            assert differences(conn) == ["likes.likes_counted: trigger missing from the database"]
            create_triggers(conn)  # the shared PostgreSQL database serves the next tests
            conn.commit()
            assert differences(conn) == []
    finally:
        engine.dispose()
