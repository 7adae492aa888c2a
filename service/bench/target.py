"""What the scenarios need, made through the API of a running service (`--target URL`), and the
HTTP calls the bench makes outside the measured load.

A bench that starts its own service seeds the database directly and makes an API key with the
CLI; a target elsewhere (a container, another host, the scaled-out topology) gets a few users who
post, follow, like and comment, and purchases for the summary scenario, all through its API. Every
name it makes starts with `bench_` and a random tag, so runs do not collide.
"""

from __future__ import annotations

import json
import random
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson

from service.bench.scenarios import Context, batch_request

AUTHORS = 10
POSTS_EACH = 10
TIMEOUT_SECONDS = 120


class TargetRefused(SystemExit):
    """The target answered a setup call with an error: the bench cannot go on, and says why."""


def call(base: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    """One JSON call; its parsed answer (None when empty). An error answer ends the bench."""
    data = None if body is None else orjson.dumps(body)
    sent = {**({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})}
    request = urllib.request.Request(f"{base}{path}", data, sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise TargetRefused(f"{method} {base}{path} answered {exc.code}: {detail}") from None
    except OSError as exc:
        raise TargetRefused(f"{method} {base}{path} failed: {exc}") from None


def sign_in(base: str, username: str, password: str) -> str:
    return str(
        call(base, "POST", "/auth/login", {"username": username, "password": password})["access_token"]
    )


def record_customers(base: str, ctx: Context, say: Callable[[str], None]) -> None:
    """10,000 purchases for up to 5,000 customers, and the first thousand's ids (for the summary)."""
    say("recording 10,000 purchases for up to 5,000 customers (for the summary scenario)")
    rng = random.Random(7)
    for _ in range(10):
        _, path, body, headers = batch_request(rng, ctx)
        call(base, "POST", path, orjson.loads(body or b"{}"), headers)
    cursor = ""
    while len(ctx.customer_ids) < 1000:
        page = call(base, "GET", f"/customers?limit=100&cursor={cursor}", headers=ctx.caller_headers)
        ctx.customer_ids += [customer["id"] for customer in page["items"]]
        if not (cursor := page["next_cursor"] or ""):
            break


def seed_through_api(base: str, api_key: str, say: Callable[[str], None]) -> Context:
    """A reader following AUTHORS users with POSTS_EACH posts each, some liked and commented; the
    reader's token, and `api_key` (every scope) for the ledger's scenarios."""
    tag = secrets.token_hex(3)
    password = secrets.token_urlsafe(16)
    say(f"seeding through the API: {AUTHORS + 1} users (bench_{tag}_*), {AUTHORS * POSTS_EACH} posts")

    def user(name: str) -> str:
        username = f"bench_{tag}_{name}"
        call(
            base,
            "POST",
            "/auth/register",
            {"username": username, "email": f"{username}@example.com", "password": password},
        )
        return sign_in(base, username, password)

    reader = user("reader")
    as_reader = {"Authorization": f"Bearer {reader}"}
    for number in range(AUTHORS):
        author = f"a{number}"
        as_author = {"Authorization": f"Bearer {user(author)}"}
        call(base, "PUT", f"/users/bench_{tag}_{author}/follow", headers=as_reader)
        for post_number in range(POSTS_EACH):
            post = call(base, "POST", "/posts", {"content": f"post {post_number} by {author}"}, as_author)
            if post_number % 2 == 0:
                call(base, "PUT", f"/posts/{post['id']}/like", headers=as_reader)
            if post_number % 3 == 0:
                call(base, "POST", f"/posts/{post['id']}/comments", {"body": "well said"}, as_reader)
    ctx = Context(api_key=api_key, token=reader, customer_ids=[])
    record_customers(base, ctx, say)
    return ctx
