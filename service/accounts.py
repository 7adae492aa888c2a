"""Accounts and revocable sessions: bcrypt passwords, JWT access tokens carrying a session id."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import bcrypt
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from starlette.requests import Request
from starlette.responses import Response

from service.auth import AuthSettings, Caller, auth_settings, database, unauthorized
from service.db import Database
from service.errors import Problem
from service.login_throttle import LoginAttempt, client_address, count_attempt, forgive
from service.openapi import documented
from service.pagination import Page, PageQuery, page_of
from service.responses import JSONResponse, no_content
from service.tables import ROLES
from service.timestamps import from_database, utc_now
from service.tokens import issue_access_token
from service.validation import (
    SURROGATE,
    USERNAME,
    USERNAME_REGEX,
    NormalizedEmail,
    load,
    load_query,
    path_id,
    read_json,
)

BCRYPT_MAX_BYTES = 72
T = TypeVar("T")


class Password(fields.String):
    """At least 8 characters and at most 72 bytes of UTF-8: bcrypt reads no further than 72 bytes,
    so longer is refused, not cut."""

    def __init__(self, **kwargs: Any) -> None:
        description = (
            "At least 8 characters, at most 72 bytes of UTF-8 (bcrypt's limit):"
            " 72 ASCII characters, fewer with accents."
        )
        # No NUL: C bcrypt implementations stop at it, so "a\0b" would hash as "a". No lone surrogate
        # either (refused, not in the pattern: see validation.TEXT_PATTERN): it has no UTF-8 to hash.
        metadata = {
            "minLength": 8,
            "maxLength": 72,
            "pattern": "^[^\\u0000]*$",
            "description": description,
        }
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        password = super()._deserialize(value, attr, data, **kwargs)
        if len(password) < 8:
            raise ValidationError("Must be at least 8 characters.")
        if SURROGATE.search(password):
            raise ValidationError("Not valid Unicode text.")
        size = len(password.encode("utf-8"))
        if size > BCRYPT_MAX_BYTES:
            raise ValidationError(
                f"Must be at most {BCRYPT_MAX_BYTES} bytes in UTF-8 (bcrypt's limit);"
                f" this one is {size} bytes."
            )
        if "\x00" in password:
            raise ValidationError("Must not contain NUL characters.")
        return password


def _username_rule(value: str) -> None:
    # fullmatch, not Regexp's match with ^...$: Python's $ also matches before a final newline.
    if not USERNAME.fullmatch(value):
        raise ValidationError("Must be 3 to 32 characters of lower-case letters, digits and _.")


class RegisterIn(Schema):
    username = fields.String(
        required=True, validate=_username_rule, metadata={"pattern": f"^{USERNAME_REGEX}$"}
    )
    email = NormalizedEmail(required=True)
    password = Password(required=True)


class LoginIn(Schema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=32))
    # No length rule here: any password that is not the account's is simply wrong (401).
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024))


class OAuth2PasswordForm(LoginIn):
    """The OAuth2 password grant's form: grant_type, if sent, must be "password"; other fields
    (scope, client_id, client_secret) are ignored."""

    class Meta:
        unknown = EXCLUDE

    grant_type = fields.String(load_default="password", validate=validate.Equal("password"))


class UserOut(Schema):
    id = fields.Integer(required=True)
    username = fields.String(required=True)
    email = fields.String(required=True)
    role = fields.String(
        required=True,
        validate=validate.OneOf(ROLES),
        metadata={
            "description": "member: the social feed and the account itself. staff: also the purchase"
            " ledger (set only from the command line: python -m service user set-role)."
        },
    )
    created_at = fields.DateTime(required=True)


class TokenOut(Schema):
    access_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"examples": ["bearer"]})
    expires_in = fields.Integer(
        required=True, metadata={"description": "Seconds until the token and session end."}
    )
    session_id = fields.Integer(required=True)


class SessionOut(Schema):
    id = fields.Integer(required=True)
    created_at = fields.DateTime(required=True)
    expires_at = fields.DateTime(required=True)
    current = fields.Boolean(required=True, metadata={"description": "The session of the token that asked."})


SessionPage = page_of(SessionOut, "SessionPage")
_register_in = RegisterIn()
_login_in = LoginIn()
_oauth2_form = OAuth2PasswordForm()
_page_query = PageQuery()


def user_json(row: Any) -> dict[str, Any]:
    """A user's own account: never a password or a hash."""
    return {
        "id": row["id"],
        "username": row["username"],
        "email": row["email"],
        "role": row["role"],
        "created_at": from_database(row["created_at"]),
    }


# bcrypt releases the GIL, so in a thread it never holds up the event loop. Its own small pool
# (one thread fewer than there are cores) also keeps a flood of logins from taking every core
# from the loop: logins queue for the pool while everything else is served.
_bcrypt_pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="bcrypt")


async def _in_bcrypt_pool(work: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_bcrypt_pool, work, *args)


async def hash_password(password: str, rounds: int) -> bytes:
    return await _in_bcrypt_pool(bcrypt.hashpw, password.encode(), bcrypt.gensalt(rounds))


def _checkpw(password: bytes, password_hash: bytes) -> bool:
    # Registration allows 8 to 72 bytes, so a longer password never matches; bcrypt 5 would raise
    # on it, so it is checked in 72 bytes (the same work) and refused.
    return bcrypt.checkpw(password[:BCRYPT_MAX_BYTES], password_hash) and len(password) <= BCRYPT_MAX_BYTES


async def password_matches(password: str, password_hash: bytes) -> bool:
    return await _in_bcrypt_pool(_checkpw, password.encode("utf-8", errors="surrogatepass"), password_hash)


async def make_dummy_hash(rounds: int) -> bytes:
    return await hash_password("not anyone's password", rounds)


async def set_role(db: Database, username: str, role: str) -> Any | None:
    """Make a user `role` ("member" or "staff"); None when there is no such user.

    Every request reads the role with its session, so the change counts from the user's next one.
    """
    return await db.fetch_one(db.sql.set_user_role, {"username": username, "role": role})


async def first_staff(db: Database) -> str | None:
    """A staff user's name, or None while nobody is staff."""
    row = await db.fetch_one(db.sql.find_staff, {})
    return None if row is None else str(row["username"])


async def register_user(db: Database, username: str, email: str, password_hash: bytes) -> Any:
    """The new user's row; a 409 naming the taken field(s) when the username or email is in use."""
    row = await db.fetch_one(
        db.sql.create_user,
        {"username": username, "email": email, "password_hash": password_hash.decode(), "now": utc_now()},
    )
    if row is not None:
        return row
    taken: dict[str, list[str]] = {}
    for clash in await db.fetch_all(db.sql.find_taken_names, {"username": username, "email": email}):
        if clash["username_taken"]:
            taken["username"] = ["Already taken."]
        if clash["email_taken"]:
            taken["email"] = ["Already registered."]
    raise Problem(409, "That username or email is already registered.", errors=taken or None)


async def open_session(db: Database, user_id: int, auth: AuthSettings, attempt: LoginAttempt) -> Any:
    """A new session for the user; that user's sessions dead past the retention period go, and the
    sign-in attempt is taken back from the throttle's counts (all in one transaction)."""
    now = utc_now()
    _, [session], *_ = await db.fetch_all_atomically(
        [
            (
                db.sql.purge_dead_sessions_of_user,
                {"user_id": user_id, "cutoff": now - auth.session_retention},
            ),
            (db.sql.create_session, {"user_id": user_id, "now": now, "expires_at": now + auth.token_ttl}),
            *forgive(db, attempt),
        ]
    )
    return session


async def revoke_session(db: Database, user_id: int, session_id: int) -> bool:
    changed: int = await db.execute(
        db.sql.revoke_session, {"session_id": session_id, "user_id": user_id, "now": utc_now()}
    )
    return changed > 0


async def purge_dead_sessions(db: Database, retention_cutoff: datetime) -> int:
    return int(await db.execute(db.sql.purge_dead_sessions, {"cutoff": retention_cutoff}))


async def _login_body(request: Request) -> dict[str, Any]:
    """JSON, or the OAuth2 password grant's form (application/x-www-form-urlencoded)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        credentials: dict[str, Any] = load(_login_in, await read_json(request))
        return credentials
    try:
        form = dict(
            parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        )
    except UnicodeDecodeError:
        raise Problem(400, "The form is not valid UTF-8.") from None
    loaded: dict[str, Any] = load(_oauth2_form, form)
    return loaded


@documented(body=RegisterIn, responses={201: UserOut}, errors=[409])
async def register(request: Request) -> Response:
    """Create an account. 409 when the username or email is taken."""
    body = load(_register_in, await read_json(request))
    db = database(request)
    password_hash = await hash_password(body["password"], auth_settings(request).bcrypt_rounds)
    row = await register_user(db, body["username"], body["email"], password_hash)
    return JSONResponse(user_json(row), status_code=201, headers={"Location": f"/users/{row['username']}"})


@documented(body=LoginIn, form=OAuth2PasswordForm, responses={200: TokenOut}, errors=[401, 429])
async def login(request: Request) -> Response:
    """Check the password and open a session; the access token carries its id.

    429 with Retry-After, before the password is checked, once a window holds too many failed
    sign-ins for this username from this address, or from this address across usernames.
    """
    credentials = await _login_body(request)
    auth = auth_settings(request)
    db = database(request)
    username = credentials["username"].strip().lower()
    # Counted (or refused: 429) before anything is looked up or hashed.
    attempt = await count_attempt(db, auth.login_throttle, username, client_address(request), utc_now())
    # A name no account can have (NUL, say, which PostgreSQL would refuse) is simply unknown.
    user = None
    if USERNAME.fullmatch(username):
        user = await db.fetch_one(db.sql.find_user_for_login, {"username": username})
    # Unknown users are checked against a dummy hash: both failures cost one bcrypt check.
    stored = user["password_hash"].encode() if user is not None else auth.dummy_hash
    if not await password_matches(credentials["password"], stored) or user is None:
        raise unauthorized("Wrong username or password.")
    session = await open_session(db, user["id"], auth, attempt)
    token = issue_access_token(auth.signing_key, user["id"], session["id"], utc_now(), auth.token_ttl)
    return JSONResponse(
        {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": int(auth.token_ttl.total_seconds()),
            "session_id": session["id"],
        },
        headers={"Cache-Control": "no-store"},
    )


@documented(responses={204: None})
async def logout(request: Request, caller: Caller) -> Response:
    """End the current session: its token stops working at once."""
    assert caller.session_id is not None
    await revoke_session(database(request), caller.id, caller.session_id)
    return no_content()


@documented(query=PageQuery, responses={200: SessionPage})
async def list_sessions(request: Request, caller: Caller) -> Response:
    """The caller's live sessions, newest first; `current` marks the one this token belongs to."""
    page = Page.from_query(load_query(_page_query, request))
    db = database(request)
    rows = await db.fetch_all(
        db.sql.list_live_sessions, {**page.values(), "user_id": caller.id, "now": utc_now()}
    )

    def session_json(row: Any) -> dict[str, Any]:
        return {
            "id": row["id"],
            "created_at": from_database(row["created_at"]),
            "expires_at": from_database(row["expires_at"]),
            "current": row["id"] == caller.session_id,
        }

    return JSONResponse(page.respond(rows, session_json))


@documented(responses={204: None})
async def end_session(request: Request, caller: Caller) -> Response:
    """Revoke one of the caller's own sessions (another device's, say). 404 for anyone else's."""
    session_id = path_id(request)
    if not await revoke_session(database(request), caller.id, session_id):
        raise Problem(404, f"You have no live session {session_id}.")
    return no_content()


@documented(responses={200: UserOut})
async def me(request: Request, caller: Caller) -> Response:
    """The signed-in user's account."""
    db = database(request)
    row = await db.fetch_one(db.sql.get_user, {"id": caller.id})
    if row is None:  # deleted between the session check and here
        raise unauthorized("This account no longer exists.")
    return JSONResponse(user_json(row))
