"""The social feed: posts, comments, likes, reposts, follows and timelines, every list with its counts.

Reads are public; writes need a user's access token. Every list of posts comes from one statement
per page (author and counts included), never one query per post.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields
from starlette.requests import Request
from starlette.responses import Response

from service.auth import Caller, database
from service.db import Database
from service.errors import Problem, ValidationProblem
from service.openapi import documented
from service.pagination import Page, PageQuery, page_of
from service.responses import JSONResponse, created, no_content
from service.timestamps import from_database, utc_now
from service.validation import Text, load_query, path_id, read_valid_json


class PostIn(Schema):
    content = Text(max=280, required=True)


class CommentIn(Schema):
    body = Text(max=1000, required=True)


class PostOut(Schema):
    id = fields.Integer(required=True)
    author = fields.String(required=True)
    content = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    edited_at = fields.DateTime(required=True, allow_none=True, metadata={"description": "null until edited"})
    like_count = fields.Integer(required=True)
    repost_count = fields.Integer(required=True)
    comment_count = fields.Integer(required=True)


class CommentOut(Schema):
    id = fields.Integer(required=True)
    post_id = fields.Integer(required=True)
    author = fields.String(required=True)
    body = fields.String(required=True)
    created_at = fields.DateTime(required=True)


class ProfileOut(Schema):
    id = fields.Integer(required=True)
    username = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    post_count = fields.Integer(required=True)
    follower_count = fields.Integer(required=True)
    following_count = fields.Integer(required=True)


class FollowedUserOut(Schema):
    id = fields.Integer(required=True)
    username = fields.String(required=True)
    followed_at = fields.DateTime(required=True)


PostPage = page_of(PostOut, "PostPage")
CommentPage = page_of(CommentOut, "CommentPage")
FollowedUserPage = page_of(FollowedUserOut, "FollowedUserPage")
_post_in = PostIn()
_comment_in = CommentIn()
_page_query = PageQuery()


def post_json(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "author": row["author"],
        "content": row["content"],
        "created_at": from_database(row["created_at"]),
        "edited_at": from_database(row["edited_at"]),
        "like_count": int(row["like_count"]),
        "repost_count": int(row["repost_count"]),
        "comment_count": int(row["comment_count"]),
    }


def comment_json(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "post_id": row["post_id"],
        "author": row["author"],
        "body": row["body"],
        "created_at": from_database(row["created_at"]),
    }


def followed_user_json(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "username": row["username"], "followed_at": from_database(row["followed_at"])}


def _page(request: Request, ascending: bool = False) -> Page:
    return Page.from_query(load_query(_page_query, request), ascending=ascending)


async def _require_post(db: Database, post_id: int) -> Any:
    row = await db.fetch_one(db.sql.find_post, {"id": post_id})
    if row is None:
        raise Problem(404, f"There is no post {post_id}.")
    return row


async def _require_user(db: Database, username: str) -> Any:
    row = await db.fetch_one(db.sql.find_user_by_name, {"username": username})
    if row is None:
        raise Problem(404, f"There is no user {username!r}.")
    return row


# Posts


@documented(body=PostIn, responses={201: PostOut})
async def create_post(request: Request, caller: Caller) -> Response:
    """Publish a post (1 to 280 characters)."""
    body = await read_valid_json(request, _post_in)
    db = database(request)
    row = await db.fetch_one(
        db.sql.create_post, {"author_id": caller.id, "content": body["content"], "now": utc_now()}
    )
    assert row is not None
    post = {
        **dict(row),
        "author": caller.name,
        "edited_at": None,
        "like_count": 0,
        "repost_count": 0,
        "comment_count": 0,
    }
    return created(post_json(post), f"/posts/{row['id']}")


@documented(responses={200: PostOut})
async def show_post(request: Request) -> Response:
    """One post with its author and counts."""
    post_id = path_id(request)
    db = database(request)
    row = await db.fetch_one(db.sql.get_post, {"id": post_id})
    if row is None:
        raise Problem(404, f"There is no post {post_id}.")
    return JSONResponse(post_json(row))


@documented(query=PageQuery, responses={200: PostPage})
async def list_posts(request: Request) -> Response:
    """All posts, newest first, with counts."""
    page = _page(request)
    db = database(request)
    return JSONResponse(page.respond(await db.fetch_all(db.sql.list_posts, page.values()), post_json))


@documented(body=PostIn, responses={200: PostOut}, errors=[403])
async def edit_post(request: Request, caller: Caller) -> Response:
    """Replace your own post's content (1 to 280 characters); sets edited_at. 403 for someone else's."""
    post_id = path_id(request)
    body = await read_valid_json(request, _post_in)
    db = database(request)
    # The edit and the read-back in one transaction: the answer is the post as this edit left it.
    edited, shown = await db.fetch_all_atomically(
        [
            (
                db.sql.edit_own_post,
                {"id": post_id, "author_id": caller.id, "content": body["content"], "now": utc_now()},
            ),
            (db.sql.get_post, {"id": post_id}),
        ]
    )
    if not shown:
        raise Problem(404, f"There is no post {post_id}.")
    if not edited:
        raise Problem(403, "Only the author may edit a post.")
    return JSONResponse(post_json(shown[0]))


@documented(responses={204: None}, errors=[403])
async def delete_post(request: Request, caller: Caller) -> Response:
    """Delete your own post, with its likes, reposts and comments. 403 for someone else's."""
    post_id = path_id(request)
    db = database(request)
    if await db.execute(db.sql.delete_own_post, {"id": post_id, "author_id": caller.id}):
        return no_content()
    await _require_post(db, post_id)
    raise Problem(403, "Only the author may delete a post.")


# Comments


@documented(body=CommentIn, responses={201: CommentOut})
async def create_comment(request: Request, caller: Caller) -> Response:
    """Comment on a post (1 to 1000 characters)."""
    post_id = path_id(request)
    body = await read_valid_json(request, _comment_in)
    db = database(request)
    row = await db.fetch_one(
        db.sql.create_comment,
        {"post_id": post_id, "author_id": caller.id, "body": body["body"], "now": utc_now()},
    )
    if row is None:
        raise Problem(404, f"There is no post {post_id}.")
    return created(comment_json({**dict(row), "author": caller.name}), f"/posts/{post_id}/comments")


@documented(query=PageQuery, responses={200: CommentPage})
async def list_comments(request: Request) -> Response:
    """A post's comments, oldest first."""
    post_id = path_id(request)
    page = _page(request, ascending=True)
    db = database(request)
    rows = await db.fetch_all(db.sql.list_comments, {**page.values(), "post_id": post_id})
    if not rows:
        await _require_post(db, post_id)
    return JSONResponse(page.respond(rows, comment_json))


# Likes and reposts: PUT and DELETE are idempotent.


async def _react(request: Request, caller: Caller, statement_name: str) -> Response:
    post_id = path_id(request)
    db = database(request)
    changed = await db.execute(
        getattr(db.sql, statement_name), {"user_id": caller.id, "post_id": post_id, "now": utc_now()}
    )
    if not changed:  # already so, or no such post
        await _require_post(db, post_id)
    return no_content()


@documented(responses={204: None})
async def like(request: Request, caller: Caller) -> Response:
    """Like a post (again is fine)."""
    return await _react(request, caller, "like_post")


@documented(responses={204: None})
async def unlike(request: Request, caller: Caller) -> Response:
    """Take back a like (none is fine)."""
    return await _react(request, caller, "unlike_post")


@documented(responses={204: None})
async def repost(request: Request, caller: Caller) -> Response:
    """Repost a post (again is fine)."""
    return await _react(request, caller, "repost_post")


@documented(responses={204: None})
async def unrepost(request: Request, caller: Caller) -> Response:
    """Take back a repost (none is fine)."""
    return await _react(request, caller, "unrepost_post")


# Follows and users


async def _follow_change(request: Request, caller: Caller, statement_name: str) -> Response:
    username = request.path_params["username"]
    if username == caller.name:
        raise ValidationProblem({"username": ["You cannot follow yourself."]}, "You cannot follow yourself.")
    db = database(request)
    changed = await db.execute(
        getattr(db.sql, statement_name), {"follower_id": caller.id, "username": username, "now": utc_now()}
    )
    if not changed:  # already so, or no such user
        await _require_user(db, username)
    return no_content()


@documented(responses={204: None}, errors=[422])
async def follow(request: Request, caller: Caller) -> Response:
    """Follow a user (again is fine; yourself is 422)."""
    return await _follow_change(request, caller, "follow_user")


@documented(responses={204: None}, errors=[422])
async def unfollow(request: Request, caller: Caller) -> Response:
    """Stop following a user (not following is fine)."""
    return await _follow_change(request, caller, "unfollow_user")


@documented(responses={200: ProfileOut})
async def show_user(request: Request) -> Response:
    """A user's public profile with post, follower and following counts."""
    db = database(request)
    username = request.path_params["username"]
    row = await db.fetch_one(db.sql.user_profile, {"username": username})
    if row is None:
        raise Problem(404, f"There is no user {username!r}.")
    return JSONResponse(
        {
            "id": row["id"],
            "username": row["username"],
            "created_at": from_database(row["created_at"]),
            "post_count": int(row["post_count"]),
            "follower_count": int(row["follower_count"]),
            "following_count": int(row["following_count"]),
        }
    )


async def _user_list(request: Request, statement_name: str, shape: Any, sort_key: str) -> Response:
    username = request.path_params["username"]
    page = _page(request)
    db = database(request)
    rows = await db.fetch_all(getattr(db.sql, statement_name), {**page.values(), "username": username})
    if not rows:  # an empty page, or no such user?
        await _require_user(db, username)
    return JSONResponse(page.respond(rows, shape, sort_key=sort_key))


@documented(query=PageQuery, responses={200: PostPage})
async def user_posts(request: Request) -> Response:
    """A user's posts, newest first, with counts."""
    return await _user_list(request, "list_posts_of_user", post_json, "created_at")


@documented(query=PageQuery, responses={200: FollowedUserPage})
async def followers(request: Request) -> Response:
    """Who follows this user, most recent first."""
    return await _user_list(request, "list_followers", followed_user_json, "followed_at")


@documented(query=PageQuery, responses={200: FollowedUserPage})
async def following(request: Request) -> Response:
    """Whom this user follows, most recent first."""
    return await _user_list(request, "list_following", followed_user_json, "followed_at")


@documented(query=PageQuery, responses={200: PostPage})
async def feed(request: Request, caller: Caller) -> Response:
    """Your timeline: your posts and those of everyone you follow, newest first, with counts."""
    page = _page(request)
    db = database(request)
    rows = await db.fetch_all(db.sql.feed, {**page.values(), "user_id": caller.id})
    return JSONResponse(page.respond(rows, post_json))
