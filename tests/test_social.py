"""The social feed: posts, comments, likes, reposts, follows and timelines, with their counts."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import bearer, login, register, table_connection, table_counts


def user(client: TestClient, name: str) -> dict[str, str]:
    """Register and sign in `name`; the headers that act as them."""
    register(client, name)
    return bearer(login(client, name))


def post(client: TestClient, as_user: dict[str, str], content: str = "hello") -> dict[str, Any]:
    response = client.post("/posts", json={"content": content}, headers=as_user)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_post_is_published_with_zero_counts(client: TestClient) -> None:
    tim = user(client, "tim")
    response = client.post("/posts", json={"content": "  first!  "}, headers=tim)
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/posts/{body['id']}"
    assert {k: body[k] for k in ("author", "content", "like_count", "repost_count", "comment_count")} == {
        "author": "tim",
        "content": "first!",
        "like_count": 0,
        "repost_count": 0,
        "comment_count": 0,
    }
    assert client.get(f"/posts/{body['id']}").json() == body  # reads are public


@pytest.mark.parametrize("content", ["", "   ", "x" * 281, None, 5])
def test_bad_post_content_is_422(client: TestClient, content: Any, database_url: str) -> None:
    tim = user(client, "tim")
    response = client.post("/posts", json={"content": content}, headers=tim)
    assert response.status_code == 422 and "content" in response.json()["errors"]
    assert table_counts(database_url)["posts"] == 0


def test_writes_need_a_user_token(client: TestClient, api_key: str) -> None:
    # No credential: 401. An API key, however live: 403 - these routes act as a person.
    tim = user(client, "tim")
    first = post(client, tim)
    for method, path in [
        ("POST", "/posts"),
        ("DELETE", f"/posts/{first['id']}"),
        ("PATCH", f"/posts/{first['id']}"),
        ("POST", f"/posts/{first['id']}/comments"),
        ("PUT", f"/posts/{first['id']}/like"),
        ("PUT", f"/posts/{first['id']}/repost"),
        ("PUT", "/users/tim/follow"),
        ("GET", "/feed"),
    ]:
        for headers, status in (({}, 401), ({"X-API-Key": api_key}, 403)):
            response = client.request(method, path, json={"content": "x", "body": "x"}, headers=headers)
            assert response.status_code == status, (method, path, headers)
    assert client.get(f"/posts/{first['id']}").json()["content"] == first["content"]


def test_likes_and_reposts_are_idempotent_and_counted(client: TestClient) -> None:
    tim, sue, ann = user(client, "tim"), user(client, "sue"), user(client, "ann")
    p = post(client, tim)
    for who in (sue, sue, ann):
        assert client.put(f"/posts/{p['id']}/like", headers=who).status_code == 204
    assert client.put(f"/posts/{p['id']}/repost", headers=ann).status_code == 204
    assert client.put(f"/posts/{p['id']}/repost", headers=ann).status_code == 204
    shown = client.get(f"/posts/{p['id']}").json()
    assert (shown["like_count"], shown["repost_count"]) == (2, 1)

    for _ in range(2):
        assert client.delete(f"/posts/{p['id']}/like", headers=sue).status_code == 204
        assert client.delete(f"/posts/{p['id']}/repost", headers=ann).status_code == 204
    shown = client.get(f"/posts/{p['id']}").json()
    assert (shown["like_count"], shown["repost_count"]) == (1, 0)


@pytest.mark.parametrize(
    ("method", "suffix"), [("PUT", "like"), ("DELETE", "like"), ("PUT", "repost"), ("DELETE", "repost")]
)
def test_reacting_to_a_missing_post_is_404(client: TestClient, method: str, suffix: str) -> None:
    tim = user(client, "tim")
    assert client.request(method, f"/posts/999/{suffix}", headers=tim).status_code == 404


def test_comments_are_listed_oldest_first_and_counted(client: TestClient) -> None:
    tim, sue = user(client, "tim"), user(client, "sue")
    p = post(client, tim)
    for n in range(5):
        response = client.post(
            f"/posts/{p['id']}/comments", json={"body": f"c{n}"}, headers=sue if n % 2 else tim
        )
        assert response.status_code == 201
    assert response.json()["author"] == "tim" and response.json()["post_id"] == p["id"]
    first = client.get(f"/posts/{p['id']}/comments", params={"limit": 3}).json()
    rest = client.get(
        f"/posts/{p['id']}/comments", params={"limit": 3, "cursor": first["next_cursor"]}
    ).json()
    assert [c["body"] for c in first["items"] + rest["items"]] == ["c0", "c1", "c2", "c3", "c4"]
    assert rest["next_cursor"] is None
    assert client.get(f"/posts/{p['id']}").json()["comment_count"] == 5
    assert client.post("/posts/999/comments", json={"body": "x"}, headers=tim).status_code == 404
    assert client.get("/posts/999/comments").status_code == 404
    assert (
        client.post(f"/posts/{p['id']}/comments", json={"body": "x" * 1001}, headers=tim).status_code == 422
    )


def test_only_the_author_deletes_a_post_and_what_hangs_off_it_goes_too(
    client: TestClient, database_url: str
) -> None:
    tim, sue = user(client, "tim"), user(client, "sue")
    p = post(client, tim)
    client.put(f"/posts/{p['id']}/like", headers=sue)
    client.put(f"/posts/{p['id']}/repost", headers=sue)
    client.post(f"/posts/{p['id']}/comments", json={"body": "nice"}, headers=sue)

    assert client.delete(f"/posts/{p['id']}", headers=sue).status_code == 403
    assert client.get(f"/posts/{p['id']}").status_code == 200
    assert client.delete(f"/posts/{p['id']}", headers=tim).status_code == 204
    assert client.get(f"/posts/{p['id']}").status_code == 404
    assert client.delete(f"/posts/{p['id']}", headers=tim).status_code == 404
    counts = table_counts(database_url)
    assert (counts["posts"], counts["likes"], counts["reposts"], counts["comments"]) == (0, 0, 0, 0)


def test_the_author_edits_a_post_and_every_view_shows_when(client: TestClient) -> None:
    tim, sue = user(client, "tim"), user(client, "sue")
    client.put("/users/tim/follow", headers=sue)
    p = post(client, tim, "first draft")
    assert p["edited_at"] is None
    client.put(f"/posts/{p['id']}/like", headers=sue)

    response = client.patch(f"/posts/{p['id']}", json={"content": "  second draft  "}, headers=tim)
    assert response.status_code == 200, response.text
    edited = response.json()
    assert edited["content"] == "second draft"  # trimmed, as when creating
    assert edited["edited_at"] is not None and edited["edited_at"] >= p["created_at"]
    assert {k: edited[k] for k in ("id", "author", "created_at", "like_count")} == {
        "id": p["id"],
        "author": "tim",
        "created_at": p["created_at"],
        "like_count": 1,
    }
    # The same post, the same way, wherever it is shown.
    assert client.get(f"/posts/{p['id']}").json() == edited
    assert client.get("/posts").json()["items"] == [edited]
    assert client.get("/users/tim/posts").json()["items"] == [edited]
    assert client.get("/feed", headers=sue).json()["items"] == [edited]


def test_a_post_never_edited_says_null_in_every_list(client: TestClient) -> None:
    tim = user(client, "tim")
    post(client, tim)
    for path in ("/posts", "/users/tim/posts", "/feed"):
        items = client.get(path, headers=tim).json()["items"]
        assert [item["edited_at"] for item in items] == [None], path


def test_only_the_author_edits_a_post(client: TestClient, database_url: str) -> None:
    tim, sue = user(client, "tim"), user(client, "sue")
    p = post(client, tim, "mine")
    response = client.patch(f"/posts/{p['id']}", json={"content": "hijacked"}, headers=sue)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert client.get(f"/posts/{p['id']}").json() == p  # untouched, edited_at still null
    missing = client.patch("/posts/999999", json={"content": "x"}, headers=tim)
    assert missing.status_code == 404


@pytest.mark.parametrize("content", ["", "   ", "x" * 281, None, 5])
def test_an_edit_is_validated_as_a_new_post_is(client: TestClient, content: Any) -> None:
    tim = user(client, "tim")
    p = post(client, tim, "keep me")
    response = client.patch(f"/posts/{p['id']}", json={"content": content}, headers=tim)
    assert response.status_code == 422 and "content" in response.json()["errors"]
    assert client.get(f"/posts/{p['id']}").json() == p


def test_follows_are_idempotent_and_show_in_profiles_and_lists(client: TestClient) -> None:
    tim, sue, ann = user(client, "tim"), user(client, "sue"), user(client, "ann")
    for who in (sue, sue, ann):
        assert client.put("/users/tim/follow", headers=who).status_code == 204
    assert client.put("/users/sue/follow", headers=tim).status_code == 204
    post(client, tim, "one")
    post(client, tim, "two")

    profile = client.get("/users/tim").json()
    assert {k: profile[k] for k in ("username", "post_count", "follower_count", "following_count")} == {
        "username": "tim",
        "post_count": 2,
        "follower_count": 2,
        "following_count": 1,
    }
    assert "email" not in profile
    assert [u["username"] for u in client.get("/users/tim/followers").json()["items"]] == ["ann", "sue"]
    assert [u["username"] for u in client.get("/users/tim/following").json()["items"]] == ["sue"]
    assert [p["content"] for p in client.get("/users/tim/posts").json()["items"]] == ["two", "one"]

    for _ in range(2):
        assert client.delete("/users/tim/follow", headers=sue).status_code == 204
    assert client.get("/users/tim").json()["follower_count"] == 1


def test_following_yourself_is_422_and_strangers_are_404(client: TestClient) -> None:
    tim = user(client, "tim")
    response = client.put("/users/tim/follow", headers=tim)
    assert response.status_code == 422 and "username" in response.json()["errors"]
    assert client.put("/users/nobody/follow", headers=tim).status_code == 404
    assert client.delete("/users/nobody/follow", headers=tim).status_code == 404
    for path in (
        "/users/nobody",
        "/users/nobody/posts",
        "/users/nobody/followers",
        "/users/nobody/following",
    ):
        assert client.get(path).status_code == 404


def test_the_feed_has_my_posts_and_those_i_follow_newest_first(client: TestClient) -> None:
    tim, sue, ann = user(client, "tim"), user(client, "sue"), user(client, "ann")
    post(client, tim, "tim 1")
    post(client, sue, "sue 1")
    post(client, ann, "ann 1")
    post(client, tim, "tim 2")
    client.put("/users/sue/follow", headers=tim)
    feed = client.get("/feed", headers=tim).json()
    assert [p["content"] for p in feed["items"]] == ["tim 2", "sue 1", "tim 1"]
    assert client.get("/feed", headers=ann).json()["items"][0]["content"] == "ann 1"


def test_every_page_of_every_feed_is_the_followed_posts_newest_first(
    client: TestClient, database_url: str
) -> None:
    """Read through each author's index on PostgreSQL, by one walk of all posts on SQLite: either
    way, paged at any size, a feed is exactly its user's and followees' posts, newest first, ties
    on the clock broken by id."""
    import random

    chance = random.Random(26)
    names = ["ann", "bob", "cat", "dan", "eve", "fay"]
    people = {name: user(client, name) for name in names}
    for name in names:
        for other in chance.sample([n for n in names if n != name], chance.randint(0, 4)):
            assert client.put(f"/users/{other}/follow", headers=people[name]).status_code == 204
    written = [post(client, people[chance.choice(names)], f"p{n}") for n in range(60)]
    # Many posts on one clock reading, so that the cursor's tie-break on id is exercised.
    same_moment = (
        "2026-01-02T03:04:05.000000Z" if database_url.startswith("sqlite") else "2026-01-02 03:04:05+00"
    )
    ids = ", ".join(str(p["id"]) for p in written[::3])
    with table_connection(database_url) as conn:
        conn.execute(f"UPDATE posts SET created_at = '{same_moment}' WHERE id IN ({ids})")

    for name in names:
        me = client.get(f"/users/{name}").json()["id"]
        followed = {row["username"] for row in client.get(f"/users/{name}/following").json()["items"]}
        everything = client.get("/posts", params={"limit": 100}).json()["items"]
        expected = [p["id"] for p in everything if p["author"] in followed | {name}]
        for size in (1, 3, 7, 100):
            seen: list[int] = []
            cursor = None
            while True:
                params = {"limit": size, **({"cursor": cursor} if cursor else {})}
                page = client.get("/feed", params=params, headers=people[name]).json()
                seen += [p["id"] for p in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == expected, (name, size, me)


def test_posts_list_newest_first_with_counts(client: TestClient) -> None:
    tim, sue = user(client, "tim"), user(client, "sue")
    old, new = post(client, tim, "old"), post(client, sue, "new")
    client.put(f"/posts/{old['id']}/like", headers=sue)
    items = client.get("/posts").json()["items"]
    assert [(p["content"], p["author"], p["like_count"]) for p in items] == [
        ("new", "sue", 0),
        ("old", "tim", 1),
    ]
    assert new["id"] == items[0]["id"]


def test_deleting_a_user_removes_what_hangs_off_it(client: TestClient, database_url: str) -> None:
    tim, sue = user(client, "tim"), user(client, "sue")
    p = post(client, tim)
    client.put(f"/posts/{p['id']}/like", headers=sue)
    client.post(f"/posts/{p['id']}/comments", json={"body": "hi"}, headers=sue)
    client.put("/users/tim/follow", headers=sue)
    mine = post(client, sue)
    client.put(f"/posts/{mine['id']}/like", headers=tim)
    # There is no route that deletes users; the cascade is the schema's, so delete as SQL would.
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.split(":///", 1)[1]) as conn:
            conn.execute("PRAGMA foreign_keys = ON")  # as every service connection has it
            conn.execute("DELETE FROM users WHERE username = 'sue'")
    else:
        import psycopg

        with psycopg.connect(database_url) as conn:
            conn.execute("DELETE FROM users WHERE username = 'sue'")
    counts = table_counts(database_url)
    assert {k: counts[k] for k in ("users", "posts", "likes", "comments", "follows", "sessions")} == {
        "users": 1,
        "posts": 1,
        "likes": 0,
        "comments": 0,
        "follows": 0,
        "sessions": 1,
    }


@pytest.mark.parametrize(
    "path", ["/users/a%00b", "/users/a%00b/posts", "/users/a%00b/followers", "/users/TIM"]
)
def test_a_path_that_cannot_name_a_user_is_404_not_a_database_error(client: TestClient, path: str) -> None:
    # Found by Schemathesis: PostgreSQL refuses NUL in text, so this was a 500 there.
    user(client, "tim")
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_a_feed_past_the_newest_thousand_posts_is_still_every_followed_post(
    client: TestClient, database_url: str
) -> None:
    """On PostgreSQL a page first walks the newest 1,000 posts; one that finds too few followed
    posts there is answered by each followee's index instead. Either way: exactly the followed
    posts, newest first."""
    from service.bench.sizes import SeedSize
    from service.seed import seed

    seed(database_url, SeedSize(users=60, posts=2400, likes=0, reposts=0, comments=0, follows=0), 4)
    reader = user(client, "reader")
    with table_connection(database_url) as conn:
        quiet, busy = (row[0] for row in conn.execute("SELECT username FROM users ORDER BY id LIMIT 2"))
    following: list[str] = []
    for followed in (quiet, busy):
        assert client.put(f"/users/{followed}/follow", headers=reader).status_code == 204
        following.append(followed)
        with table_connection(database_url) as conn:
            expected = [
                row[0]
                for row in conn.execute(
                    "SELECT p.id FROM posts p JOIN users u ON u.id = p.author_id"
                    f" WHERE u.username IN ({', '.join(repr(name) for name in following)})"
                    " ORDER BY p.created_at DESC, p.id DESC"
                )
            ]
        for size in (5, 30):  # one author has about 17 posts in the newest 1,000, two about 33
            seen: list[int] = []
            cursor = None
            while True:
                params = {"limit": size, **({"cursor": cursor} if cursor else {})}
                page = client.get("/feed", params=params, headers=reader).json()
                seen += [p["id"] for p in page["items"]]
                if (cursor := page["next_cursor"]) is None:
                    break
            assert seen == expected, (followed, size)
